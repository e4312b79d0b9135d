import numpy as np
import yaml
from PIL import Image

from seglab.cli import main
from seglab.engine.inference import InferenceOptions


def test_parse_tta():
    """--tta goes through the library's one reader (InferenceOptions.with_tta, as Predictor(tta=...))."""
    def tta(spec):
        options = InferenceOptions().with_tta(spec)
        return options.flip, options.scales

    assert tta("flip,scales=0.75,1,1.25") == (True, (0.75, 1.0, 1.25))
    assert tta("scales=0.5,1") == (False, (0.5, 1.0))
    assert tta(None) == (False, (1.0,))


def test_models_lists_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, count in [("fcn8s_vgg16", "134,362,751"), ("fcn16s_vgg16", "134,357,354"),
                        ("fcn32s_vgg16", "134,346,581"), ("unet", "31,030,658")]:
        assert name in out and count in out
    assert main(["models", "--task", "instance"]) == 0


def test_train_eval_predict(demo_root, tmp_path, capsys):
    cfg = {
        "name": "cli",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}},
        "data": {"dataset": "demo", "root": str(demo_root), "palette": "demo_shapes", "crop_size": [64, 64],
                 "batch_size": 4, "workers": 0},
        "train": {"iters": 3, "log_interval": 1, "checkpoint_interval": 3, "eval_interval": 0},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "optim.lr=0.001"]) == 0
    weights = tmp_path / "runs/cli/checkpoints/last.safetensors"
    assert weights.is_file()
    assert "mIoU" in capsys.readouterr().out

    out_json = tmp_path / "m.json"
    assert main(["eval", str(path), "--weights", str(weights), "--mode", "slide", "--tta", "flip",
                 "eval.crop_size=[48,48]", "eval.stride=[32,32]", "--out", str(out_json)]) == 0
    assert "mIoU" in capsys.readouterr().out and out_json.is_file()

    out = tmp_path / "pred"
    assert main(["predict", str(demo_root / "JPEGImages"), "--weights", str(weights), "--out", str(out)]) == 0
    labels = sorted(out.glob("*[0-9].png"))
    assert len(labels) == len(list((demo_root / "JPEGImages").glob("*.jpg")))
    label = Image.open(labels[0])
    assert label.mode == "P" and np.asarray(label).max() < 5
    assert (out / f"{labels[0].stem}_overlay.png").is_file()


def test_bad_config_exits_with_message(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {itrs: 3}\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.itrs" in err and "bad.yaml" in err
