import numpy as np
import pytest
import torch
import torchvision.models.segmentation as tvseg
from PIL import Image

from seglab import load_torchvision
from seglab.checkpoint import read_metadata
from seglab.cli import main
from seglab.convert import convert_torchvision
from seglab.errors import CheckpointError


@pytest.fixture(scope="module")
def lraspp_state():
    torch.manual_seed(0)
    return tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4).state_dict()


def test_cli_convert_then_predict(lraspp_state, tmp_path, capsys):
    src, dst = tmp_path / "lraspp.pth", tmp_path / "lraspp.safetensors"
    torch.save(lraspp_state, src)
    assert main(["convert", "torchvision", "lraspp_mobilenet_v3_large", str(src), str(dst)]) == 0
    meta = read_metadata(dst)
    assert meta == {"model": "lraspp_mobilenet_v3_large", "num_classes": 4, "model_kwargs": {}, "label_set": "voc"}
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(dst), "--out", str(out)]) == 0
    assert np.asarray(Image.open(out / "a.png")).shape == (37, 53)


def test_num_classes_and_aux_are_read_from_the_state_dict(lraspp_state):
    model = load_torchvision("lraspp_mobilenet_v3_large", {f"module.{k}": v for k, v in lraspp_state.items()})
    assert model.classifier.low_classifier.out_channels == 4


def test_mismatched_weights_are_listed(lraspp_state, tmp_path):
    with pytest.raises(CheckpointError, match="classifier.low_classifier.weight: file"):
        load_torchvision("lraspp_mobilenet_v3_large", lraspp_state, num_classes=21)
    state = {k: v for k, v in lraspp_state.items() if not k.startswith("classifier.cbr")}
    with pytest.raises(CheckpointError, match="missing keys: classifier.cbr.0.weight"):
        load_torchvision("lraspp_mobilenet_v3_large", state)
    with pytest.raises(CheckpointError, match="not a torchvision segmentation model"):
        convert_torchvision("unet", lraspp_state, tmp_path / "x.safetensors")
    assert main(["convert", "torchvision", "fcn_resnet50", str(tmp_path / "missing.pth"), "x.safetensors"]) == 2


def test_aux_head_follows_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    reference = tvseg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3, aux_loss=False)
    dst = convert_torchvision("deeplabv3_mobilenet_v3_large", reference.state_dict(), tmp_path / "d.safetensors")
    assert read_metadata(dst)["model_kwargs"] == {"aux_loss": False}
    with pytest.raises(CheckpointError, match="missing keys: aux_classifier"):
        load_torchvision("deeplabv3_mobilenet_v3_large", reference.state_dict(), aux_loss=True)
