"""The configs ship with the package: a wheel built from the sources, installed into a folder of its own (no
repository beside it), lists them (``seglab configs``) and finds one by name (``seglab train bisenetv2_cityscapes``).

The wheel is built without build isolation and without an index (the development environment's setuptools), from a
copy of pyproject.toml, README.md and seglab/ only, so nothing of the repository's configs/ link can leak in. The
installed copy runs in a fresh interpreter started with ``-S`` (no .pth files: the editable install of the
development environment stays out) with the wheel's folder first on ``sys.path`` and the environment's
site-packages last (where ``site`` would put it), so torch and the other dependencies come from there and seglab
from the wheel. About 15 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The wheel installed into a folder; returns the environment a subprocess runs the installed seglab with."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "seglab", src / "seglab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
                    str(src)], check=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("seglab-*.whl")
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                   cwd=tmp)
    return {"site": str(site), "cwd": str(tmp)}


def _run(installed: dict[str, str], code: str = "", module_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``code``, or ``python -m`` ``module_args``, with the installed wheel's seglab."""
    prelude = (f"import sys; sys.path.insert(0, {installed['site']!r}); "
               f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n")
    if module_args:
        code = f"import runpy; sys.argv = {list(module_args)!r}; runpy.run_module(sys.argv[0], run_name='__main__')"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-S", "-c", prelude + code], env=env, cwd=installed["cwd"],
                          capture_output=True, text=True, timeout=300)


def test_the_installed_wheel_resolves_a_config_by_name(installed):
    code = (
        "import seglab, seglab.recipes as r\n"
        "from seglab.config import load_config\n"
        "path = r.resolve_config('bisenetv2_cityscapes')\n"
        "cfg = load_config(path, ['data.root=/data/cityscapes'])\n"
        "print(seglab.__file__); print(path); print(cfg.model.name, cfg.data.dataset, cfg.train.ohem_thresh)\n"
        "print(r.resolve_config('configs/fcn/fcn8s_vgg16_voc.yaml'))\n"
        "print(len(r.list_recipes()))\n"
    )
    result = _run(installed, code)
    assert result.returncode == 0, result.stderr
    module, path, loaded, repo_path, count = result.stdout.splitlines()
    site = Path(installed["site"]).resolve()
    assert Path(module).resolve().is_relative_to(site) and not Path(module).resolve().is_relative_to(ROOT)
    assert Path(path).resolve() == site / "seglab" / "configs" / "bisenet" / "bisenetv2_cityscapes.yaml"
    assert loaded == "bisenetv2 cityscapes 0.7"
    # a repository path from the README is found in the package too, where no repository is
    assert Path(repo_path).resolve() == site / "seglab" / "configs" / "fcn" / "fcn8s_vgg16_voc.yaml"
    assert int(count) == len(list((ROOT / "configs").rglob("*.yaml")))


def test_the_installed_cli_lists_and_trains_by_name(installed):
    listed = _run(installed, module_args=("seglab", "configs", "--dataset", "cityscapes"))
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line and not line[0].isdigit()]
    assert "bisenetv2_cityscapes" in names and "fcn8s_vgg16_voc" not in names
    # `seglab train NAME`: the name resolves (the config loads, the model builds), then the missing data stops it
    missing = Path(installed["cwd"]) / "no_cityscapes_here"
    trained = _run(installed, module_args=("seglab", "train", "bisenetv2_cityscapes", f"data.root={missing}",
                                           "train.device=cpu", "data.workers=0"))
    assert trained.returncode == 2, trained.stderr
    assert "no_cityscapes_here" in trained.stderr and "config file not found" not in trained.stderr
    unknown = _run(installed, module_args=("seglab", "train", "bisenetv3_cityscapes"))
    assert unknown.returncode == 2 and "did you mean bisenetv2_cityscapes" in unknown.stderr
