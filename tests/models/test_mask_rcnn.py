import pytest
import torch
import torchvision
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.misc import FrozenBatchNorm2d

import seglab
from seglab.errors import CheckpointError, ConfigError
from seglab.model_table import count_at_paper_setting
from seglab.models import count_parameters, model_info
from seglab.models.backbones.fpn import build_fpn_backbone
from seglab.models.instance.mask_rcnn import (
    mask_rcnn_mobilenet_v3_fpn,
    mask_rcnn_resnet50_fpn,
    mask_rcnn_resnet101_fpn,
)

NAMES = ("mask_rcnn_resnet50_fpn", "mask_rcnn_resnet101_fpn", "mask_rcnn_mobilenet_v3_fpn")


def test_resnet50_fpn_has_torchvision_coco_parameter_count_and_keys():
    with torch.device("meta"):
        ours = mask_rcnn_resnet50_fpn()
        theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    assert count_parameters(ours) == 44_401_393 == MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["num_params"]
    assert model_info("mask_rcnn_resnet50_fpn").paper_params == 44_401_393
    assert count_at_paper_setting("mask_rcnn_resnet50_fpn") == 44_401_393
    # torchvision without pretrained weights uses plain BN, whose affine weights are parameters, not buffers
    bn_affine = sum(m.weight.numel() + m.bias.numel() for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn_affine == 53_120 and count_parameters(theirs) == 44_401_393 + bn_affine
    assert set(ours.state_dict()) == {k for k in theirs.state_dict() if not k.endswith("num_batches_tracked")}
    assert all(ours.state_dict()[k].shape == v.shape for k, v in theirs.state_dict().items() if k in ours.state_dict())
    assert isinstance(ours, MaskRCNN)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in ours.backbone.body.modules()) == 53
    with torch.device("meta"):
        plain = mask_rcnn_resnet50_fpn(frozen_bn=False)
    assert count_parameters(plain) == count_parameters(theirs) == 44_454_513
    assert set(plain.state_dict()) == set(theirs.state_dict())


def test_frozen_bn_from_scratch_is_the_identity_so_features_vanish():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        frozen = mask_rcnn_mobilenet_v3_fpn(num_classes=3).eval().backbone(x)["0"]
        torch.manual_seed(0)
        plain = mask_rcnn_mobilenet_v3_fpn(num_classes=3, frozen_bn=False).train().backbone(x)["0"]
    assert frozen.abs().mean() < 1e-6 < 1e-2 < plain.abs().mean()


def test_resnet101_and_mobilenet_counts_match_the_docstring():
    with torch.device("meta"):
        assert count_parameters(mask_rcnn_resnet101_fpn()) == 63_341_297
        mobile = mask_rcnn_mobilenet_v3_fpn()
        faster = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
            weights=None, weights_backbone=None, num_classes=91
        )
    assert count_parameters(mobile) == 22_032_461
    # torchvision's Faster R-CNN MobileNetV3 (plain BN) + the R50 model's mask branch - the BN affine parameters
    mask_branch = 44_401_393 - 41_755_286
    bn_affine = sum(m.weight.numel() + m.bias.numel() for m in faster.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert count_parameters(mobile) == count_parameters(faster) + mask_branch - bn_affine
    assert "63,341,297" in mask_rcnn_resnet101_fpn.__doc__ and "22,032,461" in mask_rcnn_mobilenet_v3_fpn.__doc__
    assert mobile.transform.min_size == (320,) and mobile.transform.max_size == 640
    assert mobile.rpn.score_thresh == 0.05
    assert mobile.roi_heads.mask_roi_pool.featmap_names == ["0", "1"]


def test_registered_as_instance_models():
    assert set(NAMES) <= set(seglab.list_models(task="instance"))
    info = model_info("mask_rcnn_resnet101_fpn")
    assert (info.paper, info.year, info.input_size) == ("Mask R-CNN", 2017, (800, 1333))
    assert info.paper_kwargs == {"num_classes": 91} and info.url == "https://arxiv.org/abs/1703.06870"


def test_shared_fpn_builder_and_frozen_stages():
    with torch.device("meta"):
        body, names = build_fpn_backbone("resnet50", pretrained_backbone=False, trainable_layers=3)
        assert isinstance(body, BackboneWithFPN) and body.out_channels == 256 and names == ["0", "1", "2", "3"]
        frozen = {n.split(".")[0] for n, p in body.body.named_parameters() if not p.requires_grad}
        assert frozen == {"conv1", "layer1"}
        _, names = build_fpn_backbone("mobilenet_v3_large", pretrained_backbone=False, trainable_layers=6)
        assert names == ["0", "1"]
        with pytest.raises(ConfigError, match=r"trainable_backbone_layers: expected an integer in \[0, 5\]"):
            mask_rcnn_resnet50_fpn(trainable_backbone_layers=6)
    with pytest.raises(ConfigError, match="unknown FPN backbone 'vgg16'"):
        build_fpn_backbone("vgg16", pretrained_backbone=False, trainable_layers=3)


def test_pretrained_true_without_network_says_how_to_provide_the_file(monkeypatch):
    def offline(url, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(CheckpointError) as info:
        mask_rcnn_resnet50_fpn(pretrained_backbone=True)
    assert "resnet50-" in str(info.value) and 'pretrained_backbone="/path/resnet50-' in str(info.value)


def test_local_backbone_file_is_loaded_into_the_frozen_bn_backbone(tmp_path):
    torch.manual_seed(0)
    mobilenet = torchvision.models.mobilenet_v3_large(weights=None)
    for m in mobilenet.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(mobilenet.state_dict(), path)
    model = mask_rcnn_mobilenet_v3_fpn(num_classes=3, pretrained_backbone=str(path))
    ours = model.backbone.body
    assert torch.equal(ours["0"][0].weight, mobilenet.features[0][0].weight)
    assert torch.equal(ours["16"][1].running_mean, mobilenet.features[16][1].running_mean)
    assert isinstance(ours["16"][1], FrozenBatchNorm2d)


def _scene(size: int = 160) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """An image with a bright rectangle (class 1) and a dark ellipse (class 2) on noise, with their masks."""
    torch.manual_seed(0)
    image = torch.rand(3, size, size) * 0.2 + 0.4
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 20:70, 30:110] = 1
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks[1] = (((yy - 115) / 30) ** 2 + ((xx - 90) / 45) ** 2 <= 1).to(torch.uint8)
    image[:, masks[0].bool()] = 0.95
    image[:, masks[1].bool()] = 0.05
    boxes = torch.stack([_mask_box(m) for m in masks])
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}


def _mask_box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _small_mobilenet() -> torch.nn.Module:
    # From scratch, so trainable BN (frozen BN is then the identity and the features vanish). Fewer proposals and
    # sampled RoIs than the defaults (2000, 512): the box head's FC layers dominate on a CPU.
    torch.manual_seed(0)
    return mask_rcnn_mobilenet_v3_fpn(
        num_classes=3, frozen_bn=False, min_size=160, max_size=160, box_batch_size_per_image=64,
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150, box_detections_per_img=10,
    )


def test_training_steps_on_one_batch_lower_every_loss():
    model = _small_mobilenet().train()
    image, target = _scene()
    assert target["boxes"][0].tolist() == [30.0, 20.0, 110.0, 70.0]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    totals, history = [], []
    for _ in range(6):
        torch.manual_seed(1)  # the same batch with the same anchor and RoI sampling at every step
        losses = model([image], [target])
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
        history.append({k: v.item() for k, v in losses.items()})
    assert totals[-1] < 0.9 * totals[0], totals
    for name in history[0]:  # each of the five losses, not only their sum
        assert history[-1][name] < history[0][name], (name, [h[name] for h in history])


def test_image_without_objects_trains_and_predicts():
    model = _small_mobilenet().train()
    image, target = _scene()
    empty = {
        "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 160, 160, dtype=torch.uint8),
    }
    losses = model([torch.rand(3, 160, 160), image], [empty, target])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    losses = model([torch.rand(3, 160, 160)], [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] == 0 and losses["loss_mask"] == 0  # no positives: only "background" is learnt

    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 160, 120), image])
    for result, (h, w) in zip(out, [(160, 120), (160, 160)], strict=True):
        n = len(result["boxes"])
        assert n == 10  # untrained: every class scores about 1/3, above box_score_thresh 0.05, capped at 10
        assert result["boxes"].shape == (n, 4) and result["labels"].shape == (n,) and result["scores"].shape == (n,)
        assert result["masks"].shape == (n, 1, h, w) and result["masks"].dtype == torch.float32
        assert 0 <= result["masks"].min() and result["masks"].max() <= 1
        assert ((result["boxes"][:, 2:] <= torch.tensor([w, h])) & (result["boxes"][:, :2] >= 0)).all()
