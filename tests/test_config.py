from pathlib import Path

import pytest

from seglab.config import Config, config_to_dict, load_config
from seglab.demos.semantic import demo_config
from seglab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_and_types(tmp_path):
    cfg = load_config(write(tmp_path, "name: x\ntrain: {iters: 7}\noptim: {lr: 1}\n"))
    assert isinstance(cfg, Config)
    assert cfg.train.iters == 7
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # an int is accepted for a float
    assert cfg.run_dir == Path("runs") / "x"


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "train: {iterz: 7}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "train.iterz" in str(err.value)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="'modle'"):
        load_config(write(tmp_path, "modle: {name: unet}\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("train: {iters: ten}\n", "train.iters"),
        ("train: {amp: 1}\n", "train.amp"),
        ("data: {crop_size: [1, a]}\n", "data.crop_size[1]"),
        ("model: 3\n", "model"),
        ("optim: {lr: true}\n", "optim.lr"),
    ],
)
def test_wrong_type_names_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"'{key}'" in str(err.value) and str(path) in str(err.value)


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "train: {iters: 7}\n"), ["train.iters=9", "data.crop_size=[64,32]", "name=abc"])
    assert cfg.train.iters == 9 and cfg.data.crop_size == [64, 32] and cfg.name == "abc"
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(write(tmp_path, ""), ["train.nope=1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.iters"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1,\n"))


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    load_config(path)


def test_demo_config_file_matches_demo_command():
    assert config_to_dict(load_config(ROOT / "configs/demo/unet_demo_shapes.yaml")) == config_to_dict(demo_config())
