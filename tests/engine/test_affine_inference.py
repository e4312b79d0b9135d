"""SCHP's test-time procedure (eval.mode: affine): each step on inputs with known answers, the warps against
OpenCV's warpAffine with SCHP's three-point get_affine_transform, and the labels against SCHP's evaluate.py
pipeline (re-stated with OpenCV, as SCHP runs it, in tests/schp_reference.py) on the same weights."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from schp_reference import LIP_FLIP, quarter_network, schp_evaluate_labels, schp_get_affine_transform
from torch import nn

from seglab.cli import main
from seglab.data.palettes import get_label_set
from seglab.data.transforms import normalize_image
from seglab.engine.affine import (
    affine_logits,
    affine_matrix,
    affine_probs,
    box_center_scale,
    warp_bilinear,
    warp_nearest,
)
from seglab.engine.inference import InferenceOptions, Predictor, infer_probs
from seglab.models.parsing.ce2p import schp_resnet18

# --- each step ----------------------------------------------------------------------------------------------


def test_center_and_scale_from_a_box_keep_the_inputs_aspect():
    center, scale = box_center_scale((0, 0, 99, 49), aspect_ratio=1.0)  # a 100 x 50 image, a square input
    np.testing.assert_allclose(center, [49.5, 24.5])
    np.testing.assert_allclose(scale, [99, 99])  # the height lengthened to the width
    center, scale = box_center_scale((10, 20, 30, 90), aspect_ratio=0.75)  # w 30 < 0.75 * 90 = 67.5
    np.testing.assert_allclose(center, [25, 65])
    np.testing.assert_allclose(scale, [67.5, 90])
    _, scale = box_center_scale((0, 0, 80, 40), aspect_ratio=0.5)  # w 80 > 0.5 * 40: h = 160
    np.testing.assert_allclose(scale, [80, 160])


@pytest.mark.parametrize("size,input_size", [((120, 80), (473, 473)), ((300, 410), (473, 473)),
                                             ((64, 200), (512, 384))])
def test_affine_matrix_is_schps_get_affine_transform(size, input_size):
    h, w = size
    center, scale = box_center_scale((0, 0, w - 1, h - 1), input_size[1] / input_size[0])
    np.testing.assert_allclose(affine_matrix(center, scale, input_size),
                               schp_get_affine_transform(center.astype(np.float32), scale, input_size), atol=2e-4)
    np.testing.assert_allclose(affine_matrix(center, scale, input_size, inverse=True),
                               schp_get_affine_transform(center.astype(np.float32), scale, input_size, inv=True),
                               atol=2e-4)
    # the image's corners (0, 0) and (w-1, h-1) land inside the input, the centre on its centre pixel
    m = affine_matrix(center, scale, input_size)
    np.testing.assert_allclose(m @ [center[0], center[1], 1], [(input_size[1] - 1) / 2, (input_size[0] - 1) / 2])


def test_bilinear_warp_matches_opencv_warp_affine():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 110, 3), dtype=np.uint8)
    center, scale = box_center_scale((0, 0, 109, 69), 1.0)
    m = affine_matrix(center, scale, (97, 97))
    expected = cv2.warpAffine(image, m, (97, 97), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(0, 0, 0)).astype(np.float32)
    ours = warp_bilinear(torch.from_numpy(image).permute(2, 0, 1)[None].float(), m, (97, 97))[0].permute(1, 2, 0)
    # OpenCV holds positions and weights in fixed point: within one grey level, and once rounded the same 8-bit
    # value for all but ~1.6% of this noise image's values (measured; 0-0.4% on smooth pictures)
    assert np.abs(ours.numpy() - expected).max() < 1.0
    assert (np.round(ours.numpy()) == expected).mean() >= 0.98
    # a border value per channel: the black bands above and below the picture take it
    with_border = warp_bilinear(torch.zeros(1, 3, 70, 110), m, (97, 97), border=torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(with_border[0, :, 0, 48], torch.tensor([1.0, 2.0, 3.0]))


def test_nearest_warp_matches_opencv_and_inverts_the_warp_on_a_synthetic_person():
    labels = np.zeros((150, 90), np.uint8)  # a "person": head, torso, legs
    labels[10:35, 35:55] = 13
    labels[35:90, 25:65] = 5
    labels[90:145, 28:44], labels[90:145, 46:62] = 16, 17
    center, scale = box_center_scale((0, 0, 89, 149), 1.0)
    forward = affine_matrix(center, scale, (473, 473))
    backward = affine_matrix(center, scale, (473, 473), inverse=True)
    t = torch.from_numpy(labels)[None, None]
    warped = warp_nearest(t, forward, (473, 473))
    expected = cv2.warpAffine(labels, forward, (473, 473), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
    assert (warped[0, 0].numpy() == expected).mean() >= 0.999
    # the person is centred and the picture's aspect kept: 150 rows span the input's 473, 90 columns ~284
    cols = np.where(warped[0, 0].numpy().any(axis=0))[0]
    assert abs((cols[0] + cols[-1]) / 2 - 236) <= 1
    back = warp_nearest(warped, backward, (150, 90))
    assert torch.equal(back[0, 0], t[0, 0])  # upscaled then back: every pixel returns exactly
    expected_back = cv2.warpAffine(expected, backward, (90, 150), flags=cv2.INTER_NEAREST)
    assert (back[0, 0].numpy() == expected_back).mean() >= 0.999
    # outside the source: the fill value, one per channel
    shift = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, 0.0]])  # output x = source x + 5: columns 0-4 have no source
    filled = warp_nearest(torch.ones(1, 2, 10, 10), shift, (10, 10), fill=torch.tensor([7.0, 8.0]))
    assert torch.equal(filled[0, :, 0, 4], torch.tensor([7.0, 8.0]))
    assert torch.equal(filled[0, :, 0, 5], torch.tensor([1.0, 1.0]))


class _Quadrants(nn.Module):
    """Logits that depend on where a pixel is and on the picture: an asymmetric function to flip."""

    def forward(self, x):
        k = 20
        ramp = torch.linspace(0, 1, x.shape[-1]).view(1, 1, 1, -1)
        logits = torch.zeros(x.shape[0], k, *x.shape[-2:])
        logits[:, 14] = ramp * 3 + x[:, 0]  # "left arm" grows to the right
        logits[:, 15] = 1.0 + x[:, 1]
        logits[:, 0] = 0.5 * x[:, 2]
        return logits


def test_flip_swaps_left_and_right_classes_and_averages_logits():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 24)
    model = _Quadrants()
    merged = affine_logits(model, x, scales=(1.0,), flip=True, flip_pairs=LIP_FLIP)
    plain, mirrored = model(x), model(x.flip(-1)).flip(-1)
    perm = list(range(20))
    for a, b in LIP_FLIP:
        perm[a], perm[b] = b, a
    torch.testing.assert_close(merged, (plain + mirrored[:, perm]) / 2)
    # the swap itself: the mirrored pass's "left arm" (14) lands in "right arm" (15)
    torch.testing.assert_close(merged[:, 15], (plain[:, 15] + mirrored[:, 14]) / 2)


def test_scales_average_logits_resized_with_align_corners():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 20, 20)
    model = _Quadrants()
    merged = affine_logits(model, x, scales=(0.5, 1.0))
    half = model(F.interpolate(x, size=(10, 10), mode="bilinear", align_corners=True))
    expected = (F.interpolate(half, size=(20, 20), mode="bilinear", align_corners=True) + model(x)) / 2
    torch.testing.assert_close(merged, expected)


def test_affine_mode_is_identity_when_the_image_is_the_input_size():
    """A square image of the input size warps onto itself (centre to centre, W - 1 onto W - 1), so affine mode
    gives whole mode's labels."""
    torch.manual_seed(0)
    model = schp_resnet18(num_classes=20, head_width=32).eval()
    image = normalize_image(np.random.default_rng(1).integers(0, 256, (65, 65, 3), dtype=np.uint8))[None]
    with torch.no_grad():
        affine = infer_probs(model, image, mode="affine", crop_size=(65, 65))
        whole = infer_probs(model, image)
    assert torch.equal(affine.argmax(1), whole.argmax(1))


def test_the_border_is_black_before_normalisation_and_background_after_the_warp_back():
    seen = {}

    class Spy(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return torch.zeros(x.shape[0], 3, *x.shape[-2:])

    image = normalize_image(np.full((40, 80, 3), 200, np.uint8))[None]  # wide: bands above and below
    probs = affine_probs(Spy(), image, (64, 64))
    black = normalize_image(np.zeros((1, 1, 3), np.uint8))[:, 0, 0]
    torch.testing.assert_close(seen["x"][0, :, 0, 32], black)  # the band above the picture is black
    assert probs.shape == (1, 3, 40, 80)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 40, 80))


# --- SCHP's pipeline on the same weights ---------------------------------------------------------------------


def _picture(rng, h, w):
    """Smooth colour fields: random blocks, upscaled."""
    return cv2.resize(rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8), (w, h),
                      interpolation=cv2.INTER_LINEAR)


def _varied_schp(head_width):
    """A random schp_resnet18 whose BatchNorm statistics are estimated on such pictures, so that its labels vary
    over an image (with the initial statistics one class wins everywhere)."""
    torch.manual_seed(0)
    model = schp_resnet18(num_classes=20, head_width=head_width)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    rng = np.random.default_rng(1)
    with torch.no_grad():
        model.train()(torch.stack([normalize_image(_picture(rng, 129, 129)) for _ in range(4)]))
    return model.eval()


@pytest.mark.parametrize("scales,flip,fast", [((1.0,), False, False), ((1.0,), True, False),
                                             ((0.75, 1.0, 1.25), True, False), ((0.75, 1.0, 1.25), True, True)])
def test_labels_agree_with_schps_evaluate_pipeline(scales, flip, fast):
    """Measured: all 70,741 pixels agree in each setting (eager); the fast path (BatchNorm folded, channels-last)
    differs from eager by float rounding only."""
    rng = np.random.default_rng(0)
    model = _varied_schp(64)
    input_size = (129, 129)  # SCHP's 473 scaled down for the CPU; the same arithmetic
    agree = total = 0
    for h, w in ((150, 90), (90, 160), (129, 129), (200, 131)):
        image = _picture(rng, h, w)
        reference = schp_evaluate_labels(quarter_network(model), image, input_size, scales, flip, LIP_FLIP)
        predictor = Predictor(model, InferenceOptions(mode="affine", crop_size=input_size, scales=scales, flip=flip,
                                                      flip_pairs=LIP_FLIP), fast=fast)
        ours = predictor(image)
        assert ours.shape == reference.shape == (h, w)
        assert len(np.unique(reference)) > 3  # a varied label map, not one class everywhere
        agree += int((ours == reference).sum())
        total += reference.size
    print(f"{agree / total:.6f} of {total} pixels agree with SCHP's pipeline")
    assert agree / total >= 0.999, f"{agree / total:.5f} of the pixels agree with SCHP's pipeline"


def test_eval_and_predict_take_the_affine_mode(tmp_path):
    from seglab.checkpoint import save_weights

    torch.manual_seed(0)
    model = schp_resnet18(num_classes=20, head_width=32).eval()
    weights = save_weights(tmp_path / "w.safetensors", model.state_dict(),
                           {"model": "schp_resnet18", "num_classes": 20, "model_kwargs": {"head_width": 32},
                            "label_set": "lip"})
    image = np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "p.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "p.png"), "--weights", str(weights), "--out", str(out), "--mode", "affine",
                 "--crop-size", "65", "65", "--tta", "flip"]) == 0
    written = np.array(Image.open(out / "p.png"))
    expected = Predictor(model, InferenceOptions(mode="affine", crop_size=(65, 65), flip=True,
                                                 flip_pairs=get_label_set("lip").flip_pairs), fast=False)(image)
    assert (written == expected).mean() >= 0.999


def test_seglab_eval_scores_the_affine_modes_predictions(tmp_path):
    import json

    import yaml

    from seglab.checkpoint import save_weights
    from seglab.config import load_config
    from seglab.data.datasets.demo_people import generate_demo_people
    from seglab.engine.evaluator import ConfusionMatrix
    from seglab.tasks import task_of

    people = generate_demo_people(tmp_path / "people", seed=2, num_train=1, num_val=3, size=64, num_cihp_train=1,
                                  num_cihp_val=1)
    model = _varied_schp(32)
    weights = save_weights(tmp_path / "w.safetensors", model.state_dict(),
                           {"model": "schp_resnet18", "num_classes": 20, "model_kwargs": {"head_width": 32}})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "affine", "output_dir": str(tmp_path / "runs"),
        "model": {"name": "schp_resnet18", "num_classes": 20, "kwargs": {"head_width": 32}},
        "data": {"dataset": "demo_people", "root": str(people), "palette": "lip", "workers": 0},
        "train": {"device": "cpu"},
        "eval": {"mode": "whole", "crop_size": [65, 65], "flip": True, "absent": "zero"},
    }))
    scores = {}
    for mode in ("whole", "affine"):
        out = tmp_path / f"{mode}.json"
        assert main(["eval", str(config), "--weights", str(weights), "--mode", mode, "--out", str(out)]) == 0
        scores[mode] = json.loads(out.read_text())["mIoU"]
    # the same numbers from the affine Predictor's labels on the val split
    cfg = load_config(config)
    dataset = task_of(cfg.model.name).build_dataset(cfg.data, cfg.data.val_split, train=False)
    predictor = Predictor(model, InferenceOptions(mode="affine", crop_size=(65, 65), flip=True,
                                                  flip_pairs=get_label_set("lip").flip_pairs), fast=False)
    hist = ConfusionMatrix(20)
    for i in range(len(dataset)):
        image, mask = dataset[i][:2]
        hist.update(torch.from_numpy(predictor(image))[None], mask[None])
    assert scores["affine"] == pytest.approx(hist.compute(absent="zero").mIoU, abs=1e-9)
    assert scores["affine"] != scores["whole"]  # a different procedure, a different score
