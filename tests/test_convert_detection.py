import pytest
import torch
from safetensors.torch import save_file
from torchvision.models.detection import maskrcnn_resnet50_fpn

from seglab import load_torchvision
from seglab.checkpoint import load_weights, read_metadata
from seglab.cli import main
from seglab.convert import convert_torchvision
from seglab.errors import CheckpointError
from seglab.models.instance.mask_rcnn import mask_rcnn_resnet50_fpn

# Small images and few proposals/detections for CPU speed (the mask head runs once per detection); every
# detection is kept (score threshold 0).
SMALL = {
    "min_size": 200, "max_size": 320, "box_score_thresh": 0.0, "box_detections_per_img": 8,
    "rpn_post_nms_top_n_test": 200,
}


@pytest.fixture(scope="module")
def reference():
    """torchvision's maskrcnn_resnet50_fpn (plain BN, as weights=None builds it) with seeded random weights.

    The box predictor is re-drawn larger so that some classes score well above the background, and the BN
    statistics are perturbed so the test notices if they are not carried over.
    """
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, **SMALL)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-2.0, 1.0, 0.5, 0.0, -0.5]))
        for module in model.backbone.body.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.2, 0.5)  # keeps the un-normalised random ResNet's activations finite
    return model.eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return [torch.rand(3, 200, 240), torch.rand(3, 160, 200)]


def _assert_same_detections(ours, theirs):
    assert sum(len(t["boxes"]) for t in theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-5, atol=1e-4)
        assert a["masks"].shape == b["masks"].shape
        assert (a["masks"] - b["masks"]).abs().max() <= 1e-4


def test_torchvision_checkpoint_converts_and_gives_the_same_detections(reference, images, tmp_path):
    src, dst = tmp_path / "maskrcnn.pth", tmp_path / "maskrcnn.safetensors"
    torch.save(reference.state_dict(), src)
    assert convert_torchvision("mask_rcnn_resnet50_fpn", src, dst, label_set="coco") == dst
    assert read_metadata(dst) == {  # the transform's sizes as built (the factory's defaults) are recorded
        "model": "mask_rcnn_resnet50_fpn", "num_classes": 5, "model_kwargs": {"min_size": 800, "max_size": 1333},
        "label_set": "coco",
    }
    torch.manual_seed(2)
    model = mask_rcnn_resnet50_fpn(num_classes=5, **SMALL).eval()
    load_weights(model, dst)
    frozen_bn = model.backbone.body.layer1[0].bn1
    assert torch.equal(frozen_bn.running_var, reference.backbone.body.layer1[0].bn1.running_var)
    with torch.no_grad():
        theirs, ours = reference(images), model(images)
    _assert_same_detections(ours, theirs)
    assert ours[0]["masks"].shape[-2:] == (200, 240) and ours[1]["masks"].shape[-2:] == (160, 200)


def test_cli_converts_with_torchvision_name_from_safetensors(reference, tmp_path):
    src, dst = tmp_path / "maskrcnn.safetensors", tmp_path / "out.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(src))
    assert main(["convert", "torchvision", "maskrcnn_resnet50_fpn", str(src), str(dst)]) == 0
    meta = read_metadata(dst)
    assert meta["model"] == "mask_rcnn_resnet50_fpn" and meta["num_classes"] == 5
    model = load_torchvision("maskrcnn_resnet50_fpn", dst)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_cli_records_the_sizes_it_is_given_and_predict_rebuilds_with_them(reference, tmp_path):
    """--min-size/--max-size go to the factory and into the metadata, so the model seglab predict (and a model
    folder) rebuilds resizes as the converted one was told to; a 5-class detector records no label set."""
    from seglab.pretrained import from_pretrained, load_model

    src, dst = tmp_path / "maskrcnn.pth", tmp_path / "out.safetensors"
    torch.save(reference.state_dict(), src)
    assert main(["convert", "torchvision", "maskrcnn_resnet50_fpn", str(src), str(dst), "--min-size", "200",
                 "--max-size", "320", "--out-dir", str(tmp_path / "folder")]) == 0
    meta = read_metadata(dst)
    assert meta["model_kwargs"] == {"min_size": 200, "max_size": 320} and "label_set" not in meta
    rebuilt = load_model(dst)
    assert rebuilt.transform.min_size == (200,) and rebuilt.transform.max_size == 320
    folder = from_pretrained(tmp_path / "folder")
    assert folder.transform.min_size == (200,) and folder.transform.max_size == 320


def test_mismatches_are_listed(reference, tmp_path):
    state = reference.state_dict()
    with pytest.raises(CheckpointError, match=r"roi_heads.box_predictor.cls_score.weight: file \(5, 1024\)"):
        load_torchvision("maskrcnn_resnet50_fpn", state, num_classes=91)
    partial = {k: v for k, v in state.items() if not k.startswith("roi_heads.mask_predictor")}
    with pytest.raises(CheckpointError, match="missing keys: roi_heads.mask_predictor.conv5_mask.weight"):
        convert_torchvision("mask_rcnn_resnet50_fpn", partial, tmp_path / "x.safetensors")
    extra = {**state, "roi_heads.mask_iou_head.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected keys: roi_heads.mask_iou_head.weight"):
        convert_torchvision("mask_rcnn_resnet50_fpn", extra, tmp_path / "x.safetensors")
    no_classifier = {k: v for k, v in state.items() if not k.startswith("roi_heads.box_predictor")}
    with pytest.raises(CheckpointError, match="no 'roi_heads.box_predictor.cls_score.weight'"):
        convert_torchvision("maskrcnn_resnet50_fpn", no_classifier, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_coco_checkpoint_records_torchvision_label_space_and_predict_names_categories(tmp_path):
    """A 91-class (COCO) torchvision checkpoint keeps torchvision's labels = COCO category ids, so
    `seglab predict` names the classes and writes the ids a COCO evaluation expects."""
    import json

    import numpy as np
    from PIL import Image

    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **SMALL)
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.bias.copy_(torch.full((91,), -4.0))
        tv.roi_heads.box_predictor.cls_score.bias[[1, 44]] = 3.0  # person, bottle (category ids 1 and 44)
    src, dst = tmp_path / "coco.pth", tmp_path / "coco.safetensors"
    torch.save(tv.state_dict(), src)
    del tv
    convert_torchvision("maskrcnn_resnet50_fpn", src, dst, **SMALL)  # label set coco: the default at 91 classes
    meta = read_metadata(dst)
    assert meta["label_set"] == "coco" and meta["model_kwargs"]["min_size"] == 200
    assert len(meta["classes"]) == 91 and meta["classes"][1] == "person" and meta["classes"][44] == "bottle"
    assert meta["classes"][12] == "N/A" and meta["label_to_cat_id"]["90"] == 90
    Image.fromarray(np.full((160, 200, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "grey.png"), "--weights", str(dst), "--out", str(out),
                 "--score-threshold", "0.0"]) == 0
    segm = json.loads((out / "segm_results.json").read_text())
    assert segm and {r["category_id"] for r in segm} <= {1, 44}
