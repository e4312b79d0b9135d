"""Model folders: seglab.save_pretrained writes config.json, model.safetensors and a model card; seglab.from_pretrained
rebuilds the model from the folder alone (or from a Hugging Face Hub id through the Hub cache); seglab train writes
one for its best checkpoint, and seglab predict/eval/export take one with --model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import seglab
from seglab.checkpoint import read_metadata
from seglab.cli import main
from seglab.errors import CheckpointError, ConfigError, StorageError
from seglab.models import create_model
from seglab.pretrained import load_model, model_reference, open_pretrained

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-iteration seglab train of a small U-Net on the demo shapes; returns (run folder, config, data root)."""
    from seglab.data.datasets.demo import generate_demo_data

    tmp = tmp_path_factory.mktemp("pretrained")
    root = generate_demo_data(tmp / "demo", seed=0, num_train=8, num_val=2, size=64)
    cfg = {
        "name": "tiny", "output_dir": str(tmp / "runs"),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}},
        "data": {"dataset": "demo", "root": str(root), "palette": "demo_shapes", "crop_size": [64, 64],
                 "batch_size": 4, "workers": 0},
        "train": {"iters": 3, "log_interval": 1, "checkpoint_interval": 3, "eval_interval": 0},
    }
    config = tmp / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config)]) == 0
    return tmp / "runs" / "tiny", config, root


def _image(root: Path) -> np.ndarray:
    return np.array(Image.open(sorted((root / "JPEGImages").glob("*.jpg"))[0]).convert("RGB"))


def _logits(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        return model.eval()(x[None])


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    theirs = b.state_dict()
    return all(torch.equal(value, theirs[key]) for key, value in a.state_dict().items())


def _in_fresh_process(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full_env, timeout=300)


# a fresh process loads a folder or Hub id and saves the logits of one image and whether it came in eval mode
LOAD_AND_PREDICT = """
import sys, numpy as np, torch
from PIL import Image
import seglab
from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
model = seglab.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else {ref!r})
image = np.asarray(Image.open({image!r}).convert("RGB"))
x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
with torch.no_grad():
    np.save({out!r}, model(x[None]).numpy())
print("training" if model.training else "eval")
"""


def test_train_writes_a_model_folder_with_the_best_metrics(run):
    run_dir, _, _ = run
    folder = run_dir / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == "unet" and config["task"] == "semantic" and config["num_classes"] == 5
    assert config["model_kwargs"] == {"num_classes": 5, "base_width": 4}
    assert config["label_set"]["name"] == "demo_shapes"
    assert config["label_set"]["classes"] == ["background", "circle", "square", "triangle", "star"]
    assert len(config["label_set"]["colors"]) == 5
    assert config["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and config["preprocessing"]["mode"] == "whole"
    assert config["dataset"] == "demo"
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert config["metrics"]["mIoU"] == pytest.approx(final["mIoU"])  # the best (and only) evaluation
    card = (folder / "README.md").read_text()
    assert "mIoU" in card and "seglab.from_pretrained" in card and "seglab predict images/ --model" in card
    # the weights file alone also rebuilds the model (its usual metadata)
    meta = read_metadata(folder / "model.safetensors")
    assert meta["model"] == "unet" and meta["num_classes"] == 5 and meta["label_set"] == "demo_shapes"
    best = load_model(run_dir / "checkpoints" / "best.safetensors").state_dict()
    for key, value in load_model(folder / "model.safetensors").state_dict().items():
        assert torch.equal(value, best[key]), key


def test_trained_folder_loads_in_a_fresh_process_and_predicts_identically(run, tmp_path):
    """The acceptance test: seglab train's folder, loaded by from_pretrained in another process, gives the logits
    (hence the label maps) of the in-process model bit for bit, and comes in eval mode."""
    run_dir, _, root = run
    image_path = sorted((root / "JPEGImages").glob("*.jpg"))[0]
    ours = _logits(load_model(run_dir / "checkpoints" / "best.safetensors"), _image(root))
    out = tmp_path / "logits.npy"
    result = _in_fresh_process(LOAD_AND_PREDICT.format(ref=str(run_dir / "model"), image=str(image_path),
                                                       out=str(out)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "eval"
    theirs = torch.from_numpy(np.load(out))
    assert torch.equal(theirs, ours)
    assert torch.equal(theirs.argmax(1), ours.argmax(1))


def _hub_cache(folder: Path, cache: Path, repo: str = "org/name") -> Path:
    """``folder`` placed in a Hugging Face cache as the Hub lays it out: refs/main -> snapshots/<commit>/."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "README.md"):
        shutil.copy(folder / name, snapshot / name)
    return cache


def test_hub_id_loads_from_the_cache_offline(run, tmp_path):
    run_dir, _, root = run
    cache = _hub_cache(run_dir / "model", tmp_path / "hub")
    image_path = sorted((root / "JPEGImages").glob("*.jpg"))[0]
    ours = _logits(load_model(run_dir / "model" / "model.safetensors"), _image(root))
    env = {"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    for ref in ("org/name", f"org/name@{COMMIT}"):
        out = tmp_path / "logits.npy"
        script = LOAD_AND_PREDICT.format(ref=ref, image=str(image_path), out=str(out))
        result = _in_fresh_process(script, env)
        assert result.returncode == 0, result.stderr
        assert torch.equal(torch.from_numpy(np.load(out)), ours), ref


def test_uncached_hub_id_offline_is_a_clear_error(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    result = _in_fresh_process(
        "import sys; from seglab.cli import main; "
        f"sys.exit(main(['predict', {str(tmp_path / 'x.png')!r}, '--model', 'org/missing', '--out', "
        f"{str(tmp_path / 'out')!r}]))", env,
    )
    assert result.returncode == 2
    assert "org/missing" in result.stderr and "not in the Hugging Face cache" in result.stderr


def test_hub_id_without_huggingface_hub_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(CheckpointError, match=r'pip install "seglab\[hub\]"'):
        seglab.from_pretrained("org/name")


def test_save_pretrained_round_trip_and_atomic_replacement(tmp_path):
    model = create_model("unet", num_classes=3, base_width=4)
    kwargs = {"num_classes": 3, "base_width": 4}
    folder = seglab.save_pretrained(model, tmp_path / "m", name="unet", model_kwargs=kwargs,
                                    metrics={"mIoU": 0.5, "IoU": [0.1, 0.2, 0.3]}, dataset="mine")
    config = json.loads((folder / "config.json").read_text())
    assert config["label_set"]["classes"] == ["class_0", "class_1", "class_2"]  # no label set given: generic names
    assert config["metrics"] == {"mIoU": 0.5}  # scalars only
    loaded = seglab.from_pretrained(folder)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key

    # saving again replaces the folder whole; a wrong spec is refused before anything is written
    other = create_model("unet", num_classes=3, base_width=4)
    seglab.save_pretrained(other, folder, name="unet", model_kwargs={"num_classes": 3, "base_width": 4})
    assert _same_state(seglab.from_pretrained(folder), other)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        seglab.save_pretrained(model, folder, name="unet", model_kwargs={"num_classes": 4, "base_width": 4})
    assert _same_state(seglab.from_pretrained(folder), other)
    with pytest.raises(ConfigError, match="label set 'voc' has 21 classes but the model 3"):
        seglab.save_pretrained(model, tmp_path / "n", name="unet", model_kwargs={"num_classes": 3, "base_width": 4},
                               label_set="voc")
    assert not (tmp_path / "n").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left

    # a folder that is not a model folder is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(StorageError, match="not a folder this write may replace"):
        seglab.save_pretrained(model, tmp_path / "mine", name="unet",
                               model_kwargs={"num_classes": 3, "base_width": 4})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_damaged_or_mismatched_folder_is_refused(tmp_path):
    model = create_model("unet", num_classes=3, base_width=4)
    folder = seglab.save_pretrained(model, tmp_path / "m", name="unet",
                                    model_kwargs={"num_classes": 3, "base_width": 4})
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "weights": {**config["weights"], "sha256": "0" * 64}}))
    with pytest.raises(CheckpointError, match="not the weights .*config.json was written with"):
        seglab.from_pretrained(folder)
    config_path.write_text(json.dumps({**config, "model_kwargs": {"base_width": 4}}))
    with pytest.raises(CheckpointError, match="config.json: field 'model_kwargs' is missing or malformed"):
        seglab.from_pretrained(folder)
    config_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not readable JSON"):
        seglab.from_pretrained(folder)


def test_model_argument_is_a_name_a_folder_or_a_hub_id(run, tmp_path):
    run_dir, _, _ = run
    assert model_reference("unet") == "name"
    assert model_reference(str(run_dir / "model")) == "folder"
    assert model_reference("org/name") == "hub" and model_reference("org/name@v1.0") == "hub"
    with pytest.raises(ConfigError, match="registered model name .* model folder .* Hugging Face Hub id"):
        model_reference("no such thing")
    with pytest.raises(ConfigError, match="holds no config.json"):
        model_reference(str(tmp_path))


def test_cli_predict_eval_and_export_take_a_model_folder(run, tmp_path, capsys):
    run_dir, config, root = run
    folder = run_dir / "model"
    with_folder, with_weights = tmp_path / "folder", tmp_path / "weights"
    assert main(["predict", str(root / "JPEGImages"), "--model", str(folder), "--out", str(with_folder)]) == 0
    assert main(["predict", str(root / "JPEGImages"), "--weights", str(folder / "model.safetensors"),
                 "--model", "unet", "--out", str(with_weights)]) == 0  # a registered name stays a name
    labels = sorted(with_folder.glob("*[0-9].png"))
    assert labels
    for path in labels:
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(with_weights / path.name)))

    assert main(["eval", str(config), "--model", str(folder)]) == 0
    assert "mIoU" in capsys.readouterr().out

    assert main(["predict", str(root / "JPEGImages"), "--model", "no such thing", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "registered model name" in err and "model folder" in err and "Hub id" in err
    assert main(["predict", str(root / "JPEGImages"), "--model", str(folder), "--weights",
                 str(folder / "model.safetensors"), "--out", str(tmp_path)]) == 2
    assert "drop --weights" in capsys.readouterr().err


def test_cli_export_takes_a_model_folder(run, tmp_path):
    pytest.importorskip("onnxruntime")
    from seglab.export.ort import OnnxPredictor

    run_dir, _, root = run
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--model", str(run_dir / "model"), "--onnx", str(onnx), "--input-size", "64", "64"]) == 0
    assert OnnxPredictor(onnx).metadata["model"] == "unet"


def test_convert_out_dir_writes_a_model_folder_without_dst(tmp_path, capsys):
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    reference = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    src = tmp_path / "lraspp.pth"
    torch.save(reference.state_dict(), src)
    out_dir = tmp_path / "lraspp"
    assert main(["convert", "torchvision", "lraspp_mobilenet_v3_large", str(src), "--out-dir", str(out_dir)]) == 0
    assert str(out_dir) in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lraspp", "lraspp.pth"]  # no DST, no temporary file
    folder = open_pretrained(out_dir)
    assert folder.name == "lraspp_mobilenet_v3_large" and folder.label_set.name == "voc"
    model = folder.load()
    for key, value in reference.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    with pytest.raises(SystemExit, match="pass DST.safetensors, --out-dir DIR, or both"):
        main(["convert", "torchvision", "lraspp_mobilenet_v3_large", str(src)])


def test_a_run_whose_weights_do_not_rebuild_keeps_its_checkpoints_and_only_warns(tmp_path, caplog):
    """The model folder is the last step of a run: weights its config does not rebuild (a model given as an object)
    leave the run's checkpoints as they are, with a warning saying why there is no folder."""
    from types import SimpleNamespace

    from seglab.checkpoint import save_weights
    from seglab.config import EvalConfig
    from seglab.engine.trainer import Trainer

    ckpt = tmp_path / "checkpoints"
    save_weights(ckpt / "best.safetensors", {"custom.weight": torch.zeros(2)},
                 {"model": "unet", "num_classes": 3, "model_kwargs": {}, "iteration": 1})
    fake = SimpleNamespace(ckpt_dir=ckpt, run_dir=tmp_path,
                           cfg=SimpleNamespace(eval=EvalConfig(), data=SimpleNamespace(dataset="demo")))
    Trainer.write_model_folder(fake)
    assert not (tmp_path / "model").exists()
    assert "no model folder written" in caplog.text and "best.safetensors" in caplog.text
