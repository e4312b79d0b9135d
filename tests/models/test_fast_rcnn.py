import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import roi_pool

from seglab.errors import CheckpointError
from seglab.model_table import count_at_paper_setting
from seglab.models import count_parameters, list_models
from seglab.models.instance import fast_rcnn as fast_rcnn_module
from seglab.models.instance.fast_rcnn import (
    FastRCNN,
    FastRCNNRoIHeads,
    RoIPool,
    TwoFCHead,
    compress_fc,
    fast_rcnn_vgg16,
    truncated_svd,
)

SMALL = {"num_classes": 3, "min_size": 224, "max_size": 224}
GT = {"boxes": torch.tensor([[20.0, 30.0, 100.0, 120.0], [120.0, 100.0, 200.0, 200.0]]), "labels": torch.tensor([1, 2])}
PROPOSALS = torch.tensor(
    [[18.0, 28.0, 105.0, 118.0], [0.0, 0.0, 60.0, 60.0], [110.0, 90.0, 210.0, 190.0], [50.0, 50.0, 150.0, 150.0]]
)


def _capture(module: nn.Module, store: dict, name: str) -> None:
    def hook(_module, args, output):
        store[name] = (args, output)

    module.register_forward_hook(hook)


def test_paper_setting_has_134_690_729_parameters():
    assert "fast_rcnn_vgg16" in list_models(task="instance")
    assert count_at_paper_setting("fast_rcnn_vgg16") == 134_690_729
    with torch.device("meta"):
        model = fast_rcnn_vgg16(num_classes=21)
        with_rpn = fast_rcnn_vgg16(num_classes=21, rpn=True)
    head = model.roi_heads
    assert count_parameters(model.backbone) == 14_714_688  # VGG16's 13 convs
    assert count_parameters(head.box_head.fc6) == 25_088 * 4096 + 4096 == 102_764_544
    assert count_parameters(head.box_head.fc7) == 16_781_312
    assert count_parameters(head.box_predictor.cls_score) == 21 * 4097
    assert count_parameters(head.box_predictor.bbox_pred) == 84 * 4097  # class-specific boxes
    # RPN: 3x3 conv 512 + objectness 9 + deltas 36, on conv5_3
    assert count_parameters(with_rpn) - 134_690_729 == (512 * 512 * 9 + 512) + (512 * 9 + 9) + (512 * 36 + 36)


def test_conv1_and_conv2_are_frozen_and_pool5_removed():
    with torch.device("meta"):
        model = fast_rcnn_vgg16()
    convs = [m for m in model.backbone if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and not isinstance(model.backbone[-1], nn.MaxPool2d)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.backbone) == 4  # stride 16
    assert [c.weight.requires_grad for c in convs] == [False] * 4 + [True] * 9


def test_roipool_is_7x7_max_per_bin_at_scale_one_sixteenth():
    model = fast_rcnn_vgg16(**SMALL).eval()
    assert isinstance(model.roi_heads.box_roi_pool, RoIPool)
    seen = {}
    _capture(model.backbone, seen, "conv5_3")
    _capture(model.roi_heads.box_roi_pool, seen, "pool")
    # Box 1 spans feature cells 0..6 (round(96 / 16) = 6): one cell per bin. Box 2 spans cells 0..13: 2x2 per bin.
    boxes = torch.tensor([[0.0, 0.0, 96.0, 96.0], [0.0, 0.0, 208.0, 208.0], [37.0, 61.0, 150.0, 170.0]])
    with torch.no_grad():
        model([torch.rand(3, 224, 224)], proposals=[boxes])
    conv5_3 = seen["conv5_3"][1]
    pooled = seen["pool"][1]
    assert conv5_3.shape == (1, 512, 14, 14)
    assert pooled.shape == (3, 512, 7, 7)
    torch.testing.assert_close(pooled[0], conv5_3[0, :, :7, :7], rtol=0, atol=0)
    torch.testing.assert_close(pooled[1], F.max_pool2d(conv5_3[0], 2), rtol=0, atol=0)
    torch.testing.assert_close(pooled, roi_pool(conv5_3, [boxes], 7, 1 / 16), rtol=0, atol=0)


def _losses(model, image, targets, proposals):
    torch.manual_seed(1)  # same RoI sample and dropout masks for every call
    return model([image], targets, proposals)


def test_training_with_given_proposals_lowers_the_loss():
    model = fast_rcnn_vgg16(num_classes=3, min_size=128, max_size=128).train()
    for layer in model.backbone[:23]:  # up to conv4_3 fixed too, only to keep this test fast
        layer.requires_grad_(False)
    image = torch.rand(3, 128, 128)
    target = {"boxes": torch.tensor([[12.0, 16.0, 60.0, 70.0], [70.0, 60.0, 120.0, 118.0]]), "labels": GT["labels"]}
    proposals = torch.tensor([[10.0, 14.0, 62.0, 66.0], [0.0, 0.0, 40.0, 40.0], [64.0, 54.0, 124.0, 114.0]])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    totals = []
    for _ in range(2):
        losses = _losses(model, image, [target], [proposals])
        assert set(losses) == {"loss_classifier", "loss_box_reg"}
        assert all(torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    with torch.no_grad():
        final = sum(_losses(model, image, [target], [proposals]).values()).item()
    assert final < 0.8 * totals[0]
    assert model.backbone[0].weight.grad is None  # conv1_1 frozen


def test_eval_scales_proposals_and_returns_boxes_in_original_coordinates():
    model = fast_rcnn_vgg16(**SMALL).eval()
    bbox_pred = model.roi_heads.box_predictor.bbox_pred
    nn.init.zeros_(bbox_pred.weight)  # zero deltas: each detection is its proposal, mapped back
    nn.init.zeros_(bbox_pred.bias)
    seen = {}
    _capture(model.roi_heads.box_roi_pool, seen, "pool")
    proposals = torch.tensor([[10.0, 10.0, 390.0, 290.0], [0.0, 0.0, 50.0, 50.0], [200.0, 100.0, 330.0, 280.0]])
    with torch.no_grad():
        (out,) = model([torch.rand(3, 300, 400)], proposals=[proposals])
    # 300x400 resized to 168x224 (longer side capped at max_size 224): the proposals the RoIPool sees are
    # scaled by the same ratios.
    scale = torch.tensor([224 / 400, 168 / 300, 224 / 400, 168 / 300])
    torch.testing.assert_close(seen["pool"][0][1][0], proposals * scale)
    assert set(out) == {"boxes", "labels", "scores"} and len(out["boxes"]) > 0
    boxes = out["boxes"]
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 400).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 300).all()
    distance = (boxes[:, None, :] - proposals[None]).abs().amax(dim=2).amin(dim=1)
    assert (distance < 1e-3).all()  # each detection is one of the given proposals, in original coordinates
    assert boxes[:, 2].max() > 224  # beyond the resized width: not left in resized coordinates
    assert set(out["labels"].tolist()) <= {1, 2} and (out["scores"] >= 0.05).all()


def test_rpn_trains_and_predicts_without_proposals():
    model = fast_rcnn_vgg16(num_classes=3, min_size=128, max_size=128, rpn=True, rpn_proposals=(64, 16))
    image = torch.rand(3, 128, 128)
    target = {"boxes": torch.tensor([[10.0, 20.0, 90.0, 110.0]]), "labels": torch.tensor([2])}
    losses = model.train()([image], [target])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.rpn.head.conv[0][0].weight.grad.abs().sum() > 0
    seen = {}
    _capture(model.roi_heads.box_roi_pool, seen, "pool")
    with torch.no_grad():
        (out,) = model.eval()([image])
    assert 0 < len(seen["pool"][0][1][0]) <= 16  # the RPN's test-time proposals
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) == len(out["scores"]) == len(out["labels"])


def test_image_without_objects_trains_as_background():
    model = fast_rcnn_vgg16(num_classes=3, min_size=128, max_size=128).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 128, 128)], [empty], [PROPOSALS / 2])
    assert losses["loss_box_reg"].item() == 0  # no foreground RoI
    assert torch.isfinite(losses["loss_classifier"]) and losses["loss_classifier"] > 0
    losses["loss_classifier"].backward()


def test_background_iou_range_is_point_one_to_point_five():
    heads = FastRCNNRoIHeads(
        nn.Identity(), nn.Identity(), nn.Identity(), 0.5, 0.5, 64, 0.25, None, 0.05, 0.3, 100, bg_iou_low=0.1
    )
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # IoUs with the 10x10 gt box: 1.0, 0.6, 0.45, 0.3, 0.05 (heights 10, 6, 4.5, 3, 0.5)
    proposals = torch.tensor([[0.0, 0.0, 10.0, h] for h in (10.0, 6.0, 4.5, 3.0, 0.5)])
    _, (labels,) = heads.assign_targets_to_proposals([proposals], [gt], [torch.tensor([7])])
    assert labels.tolist() == [7, 7, 0, 0, -1]  # below 0.1: neither foreground nor background
    heads.bg_iou_low = 0.0
    _, (labels,) = heads.assign_targets_to_proposals([proposals], [gt], [torch.tensor([7])])
    assert labels.tolist() == [7, 7, 0, 0, 0]  # torchvision's [0, 0.5)
    heads.bg_iou_low = 0.1
    _, (labels,) = heads.assign_targets_to_proposals([proposals], [torch.zeros(0, 4)], [torch.zeros(0).long()])
    assert labels.tolist() == [0] * 5  # no objects: all background


@pytest.mark.parametrize("training", [True, False])
def test_missing_proposals_without_rpn_is_a_clear_error(training):
    model = fast_rcnn_vgg16(**SMALL).train(training)
    with pytest.raises(ValueError, match="needs proposals.*rpn=True"):
        model([torch.rand(3, 64, 64)], [GT] if training else None)
    with pytest.raises(ValueError, match=r"Tensor\[K, 4\]"):
        model([torch.rand(3, 64, 64)], [GT] if training else None, [torch.zeros(4)])


def test_truncated_svd_is_the_best_rank_r_approximation():
    linear = nn.Linear(12, 8)
    full = truncated_svd(linear, 8)
    assert [m.weight.shape for m in full] == [(8, 12), (8, 8)] and full[0].bias is None
    x = torch.randn(5, 12)
    torch.testing.assert_close(full(x), linear(x), rtol=1e-5, atol=1e-5)
    low = truncated_svd(linear, 3)
    product = low[1].weight @ low[0].weight
    singular = torch.linalg.svdvals(linear.weight.detach().double())
    error = torch.linalg.matrix_norm(product.double() - linear.weight.detach().double())
    assert math.isclose(error.item(), singular[3:].square().sum().sqrt().item(), rel_tol=1e-4)  # Eckart-Young
    torch.testing.assert_close(low[1].bias, linear.bias)
    with pytest.raises(ValueError, match="rank"):
        truncated_svd(linear, 9)


def test_compress_fc_keeps_outputs_at_full_rank():
    # A narrow Fast R-CNN (same wiring as VGG16's, 8 channels, fc 64/32) so the SVDs are small.
    backbone = nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.ReLU())
    head = TwoFCHead(nn.Linear(8 * 49, 64), nn.Linear(64, 32))
    model = FastRCNN(backbone, head, num_classes=3, representation_size=32, min_size=224, max_size=224).eval()
    images, proposals = [torch.rand(3, 224, 224)], [PROPOSALS]
    with torch.no_grad():
        before = model(images, proposals=proposals)[0]
        compress_fc(model, fc6_rank=64, fc7_rank=32)
        after = model(images, proposals=proposals)[0]
    assert [m.weight.shape for m in model.roi_heads.box_head.fc6] == [(64, 392), (64, 64)]
    assert torch.equal(before["labels"], after["labels"])
    torch.testing.assert_close(after["scores"], before["scores"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after["boxes"], before["boxes"], rtol=1e-4, atol=1e-3)
    low = FastRCNN(backbone, TwoFCHead(nn.Linear(8 * 49, 64), nn.Linear(64, 32)), num_classes=3, representation_size=32)
    compress_fc(low, fc6_rank=4, fc7_rank=2)  # the paper's use: fewer multiply-adds than the full layer
    assert [m.weight.shape for m in low.roi_heads.box_head.fc6] == [(4, 392), (64, 4)]
    assert [m.weight.shape for m in low.roi_heads.box_head.fc7] == [(2, 64), (32, 2)]


def test_backbone_weights_go_into_convs_and_fc6_fc7(monkeypatch):
    # Reading the file is tested with the backbones (test_backbones.py); here: where its weights end up.
    vgg = torchvision.models.vgg16(weights=None)
    reference = {k: v.clone() for k, v in vgg.state_dict().items()}
    asked = []

    def pretrained_vgg16(*, pretrained):
        asked.append(pretrained)
        return vgg

    monkeypatch.setattr(fast_rcnn_module, "vgg16", pretrained_vgg16)
    model = fast_rcnn_vgg16(pretrained_backbone="/weights/vgg16-397923af.pth")
    assert asked == ["/weights/vgg16-397923af.pth"]
    ours = {f"features.{k}": v for k, v in model.backbone.state_dict().items()}
    assert set(ours) == {k for k in reference if k.startswith("features.")}  # conv1_1 .. conv5_3, no pool5
    assert all(torch.equal(v, reference[k]) for k, v in ours.items())
    head = model.roi_heads.box_head
    for ours_fc, index in ((head.fc6, 0), (head.fc7, 3)):
        assert torch.equal(ours_fc.weight, reference[f"classifier.{index}.weight"])
        assert torch.equal(ours_fc.bias, reference[f"classifier.{index}.bias"])


def test_pretrained_true_without_network_says_how_to_provide_the_file(monkeypatch):
    def offline(url, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(CheckpointError, match=r'pretrained_backbone="/path/vgg16-397923af.pth"'):
        fast_rcnn_vgg16(pretrained_backbone=True)
