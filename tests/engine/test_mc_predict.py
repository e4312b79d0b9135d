import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from seglab.checkpoint import save_weights
from seglab.data.transforms import normalize_image
from seglab.engine.inference import Predictor
from seglab.methods.mc_dropout import mc_predict
from seglab.models import create_model


class TinyDropoutNet(nn.Module):
    def __init__(self, num_classes=3, dropout=0.5):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.conv(x))))


def _image(seed=0, size=(20, 24)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_mc_mean_matches_mc_predict():
    torch.manual_seed(0)
    model = TinyDropoutNet()
    image = _image()
    predictor = Predictor(model, mc_samples=5)
    torch.manual_seed(123)
    probs = predictor.predict_probs(image)
    torch.manual_seed(123)
    expected = mc_predict(model, normalize_image(image)[None], 5)["mean"][0]
    assert probs.shape == (3, 20, 24)
    torch.testing.assert_close(probs, expected)
    # the samples differ: the MC mean is not the deterministic prediction
    assert not torch.allclose(probs, Predictor(model).predict_probs(image))


def test_predict_uncertainty_fields():
    torch.manual_seed(0)
    model = TinyDropoutNet(num_classes=4)
    predictor = Predictor(model, mc_samples=6, mc_seed=7)
    out = predictor.predict_uncertainty(_image(1))
    assert out["label"].shape == (20, 24) and out["label"].dtype == np.int64
    assert out["mean"].shape == (4, 20, 24)
    torch.testing.assert_close(out["mean"].sum(0), torch.ones(20, 24))
    np.testing.assert_array_equal(out["label"], out["mean"].argmax(0).numpy())
    for key in ("entropy", "variance"):
        assert out[key].shape == (20, 24) and out[key].dtype == np.float32
        assert np.isfinite(out[key]).all()
    assert (out["entropy"] >= 0).all() and (out["entropy"] <= math.log(4) + 1e-5).all()
    assert out["entropy"].max() > 0 and out["variance"].max() > 0
    # a seeded predictor repeats itself
    again = Predictor(model, mc_samples=6, mc_seed=7).predict_uncertainty(_image(1))
    np.testing.assert_array_equal(out["entropy"], again["entropy"])
    assert model.training is False and model.drop.training is False


def test_model_without_dropout_raises():
    with pytest.raises(ValueError, match="TinyDropoutNet"):
        Predictor(TinyDropoutNet(dropout=0), mc_samples=3)
    Predictor(TinyDropoutNet(dropout=0))  # fine without MC


def test_mc_rejects_tta_and_needs_samples():
    with pytest.raises(ValueError, match="whole"):
        Predictor(TinyDropoutNet(), mc_samples=2, flip=True)
    with pytest.raises(ValueError, match="whole"):
        Predictor(TinyDropoutNet(), mc_samples=2, mode="slide")
    with pytest.raises(ValueError, match="mc_samples"):
        Predictor(TinyDropoutNet()).predict_uncertainty(_image())


def test_cli_predict_mc_samples(tmp_path):
    from seglab.cli import main

    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, base_width=4, dropout=0.5)
    weights = tmp_path / "w.safetensors"
    save_weights(weights, model.state_dict(), metadata={"model": "unet", "num_classes": 3,
                                           "model_kwargs": {"base_width": 4, "dropout": 0.5}, "label_set": "voc"})
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(_image(i, (32, 48))).save(images / f"img{i}.png")
    out = tmp_path / "out"
    assert main(["predict", str(images), "--weights", str(weights), "--out", str(out), "--mc-samples", "4"]) == 0
    for i in range(2):
        for key in ("entropy", "variance"):
            array = np.load(out / f"img{i}_{key}.npy")
            assert array.shape == (32, 48) and array.dtype == np.float32 and np.isfinite(array).all()
        entropy = np.load(out / f"img{i}_entropy.npy")
        assert (entropy >= 0).all() and (entropy <= math.log(3) + 1e-5).all()
        heat = Image.open(out / f"img{i}_uncertainty.png")
        assert heat.size == (48, 32) and heat.mode == "RGB"
        assert (out / f"img{i}.png").is_file() and (out / f"img{i}_overlay.png").is_file()
    assert not list(out.glob(".*.tmp"))
