import pytest
import torch
import torchvision
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from seglab.errors import CheckpointError, ConfigError
from seglab.model_table import count_at_paper_setting
from seglab.models import count_parameters, model_info
from seglab.models.instance.mask_scoring_rcnn import (
    MaskIoUHead,
    MaskScoringRoIHeads,
    mask_ratios,
    mask_scoring_rcnn_resnet50_fpn,
    maskiou_loss,
    maskiou_targets,
)

SIZE = 160
SMALL = {  # small images, few RoIs: a few CPU seconds per step
    "min_size": SIZE, "max_size": SIZE, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 200,
    "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100, "box_detections_per_img": 30,
    "frozen_bn": False,  # trained from random weights here: FrozenBatchNorm2d would not normalise at all
}


def _image_and_target():
    image = torch.rand(3, SIZE, SIZE)
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
    masks[0, 20:80, 30:100] = 1
    masks[1, 90:150, 60:140] = 1
    target = {"boxes": torch.tensor([[30.0, 20, 100, 80], [60, 90, 140, 150]]), "labels": torch.tensor([1, 2]),
              "masks": masks}
    return image, target


def _losses(model, image, target):
    torch.manual_seed(1)  # the same proposal sampling at every step
    return model([image], [target])


def test_maskiou_head_has_16_351_579_parameters_at_91_classes_and_16_341_329_at_81():
    assert count_parameters(MaskIoUHead(91)) == 16_351_579
    assert count_parameters(MaskIoUHead(81)) == 16_341_329
    # The full model = torchvision's Mask R-CNN + the head: 44,401,393 with its FrozenBN backbone, 44,454,513
    # with trainable BN (torchvision's weights=None build).
    assert model_info("mask_scoring_rcnn_resnet50_fpn").paper_params == 44_401_393 + 16_351_579 == 60_752_972
    assert count_at_paper_setting("mask_scoring_rcnn_resnet50_fpn") == 60_752_972
    with torch.device("meta"):
        torchvision_count = count_parameters(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None))
        ours_bn = count_parameters(mask_scoring_rcnn_resnet50_fpn(frozen_bn=False))
    assert ours_bn == torchvision_count + 16_351_579 == 44_454_513 + 16_351_579


def test_head_concatenates_257_channels_and_its_4th_conv_has_stride_2_from_14_to_7():
    head = MaskIoUHead(5).eval()
    assert head.maskiou_fcn1.in_channels == 257
    assert [c.stride for c in (head.maskiou_fcn1, head.maskiou_fcn2, head.maskiou_fcn3, head.maskiou_fcn4)] == [
        (1, 1), (1, 1), (1, 1), (2, 2)]
    shapes = []
    head.maskiou_fcn4.register_forward_hook(lambda m, i, o: shapes.append((tuple(i[0].shape), tuple(o.shape))))
    out = head(torch.randn(2, 256, 14, 14), torch.rand(2, 1, 28, 28))
    assert shapes == [((2, 256, 14, 14), (2, 256, 7, 7))]
    assert head.maskiou_fc1.in_features == 256 * 7 * 7 and out.shape == (2, 5)


def test_head_sees_the_mask_through_a_2x2_max_pool():
    head = MaskIoUHead(3).eval()
    features = torch.randn(1, 256, 14, 14)
    mask = torch.rand(1, 1, 28, 28) * 0.5
    mask[..., ::2, ::2] = 0.9  # the max of every 2x2 block
    lowered = mask.clone()
    lowered[..., 1::2, 1::2] = 0.0  # changes non-maxima only: same pooled input
    raised = mask.clone()
    raised[..., 1, 1] = 1.0  # changes one block's max
    with torch.no_grad():
        base, same, other = head(features, mask), head(features, lowered), head(features, raised)
    torch.testing.assert_close(same, base, rtol=0, atol=0)
    assert not torch.equal(other, base)


def test_maskiou_targets_hand_worked_example_uses_the_full_gt_area():
    logits = torch.full((4, 4), -1.0)
    logits[0, 0], logits[0, 1], logits[1, 0] = 2.0, 0.3, 1.0
    logits[1, 1] = 0.0  # not > 0: background
    # predicted mask (logit > 0): (0,0) (0,1) (1,0) -> area 3
    target = torch.zeros(4, 4)
    target[0, :3] = torch.tensor([1.0, 1.0, 0.75])
    target[1, :3] = torch.tensor([1.0, 0.5, 0.25])
    # GT mask (>= 0.5): (0,0) (0,1) (0,2) (1,0) (1,1) -> area 5 inside the box; intersection 3
    # ratio 1:    union 3 + 5 - 3 = 5           -> IoU 3/5  = 0.6
    # ratio 0.5:  full area 10, union 3 + 10 - 3 -> IoU 3/10 = 0.3
    # ratio 0.25: full area 20, union 20         -> IoU 0.15
    # an empty prediction: IoU 0
    logits4 = torch.stack([logits, logits, logits, torch.full((4, 4), -3.0)])
    targets4 = target.expand(4, 4, 4)
    iou = maskiou_targets(logits4, targets4, torch.tensor([1.0, 0.5, 0.25, 1.0]))
    torch.testing.assert_close(iou, torch.tensor([0.6, 0.3, 0.15, 0.0]))


def test_maskiou_loss_is_the_references_half_squared_error_over_nonzero_targets():
    predicted = torch.tensor([0.9, 0.2, 0.5, 0.7], requires_grad=True)
    targets = torch.tensor([0.6, 0.0, 0.3, 0.0])
    loss = maskiou_loss(predicted, targets)
    # kept: RoIs 0 and 2 (target > 0): 0.5 * (0.3^2 + 0.2^2) / 2 = 0.5 * 0.13 / 2 = 0.0325
    torch.testing.assert_close(loss, torch.tensor(0.0325))
    loss.backward()
    # d/dp = (p - t) / n on the kept RoIs (0.3 / 2, 0.2 / 2), nothing on the RoIs with target 0
    torch.testing.assert_close(predicted.grad, torch.tensor([0.15, 0.0, 0.1, 0.0]))
    # F.mse_loss over all four (the former loss) would be (0.09 + 0.04 + 0.04 + 0.49) / 4 = 0.165: not this
    assert abs(torch.nn.functional.mse_loss(predicted, targets).item() - 0.165) < 1e-6


def test_maskiou_loss_without_a_nonzero_target_is_zero_and_keeps_the_graph():
    predicted = torch.tensor([0.4, 0.8], requires_grad=True)
    loss = maskiou_loss(predicted, torch.zeros(2))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(predicted.grad, torch.zeros(2))


def test_mask_ratios_hand_worked_example():
    masks = torch.zeros(2, 10, 10, dtype=torch.uint8)
    masks[0, 2:6, 2:7] = 1  # 4 rows x 5 columns = 20 pixels
    boxes = torch.tensor([[2.0, 2.0, 4.4, 6.0], [0, 0, 10, 10], [7, 7, 10, 10], [0, 0, 10, 10]])
    # box 0: pixel centres x in {2.5, 3.5} (4.5 > 4.4), y in {2.5 .. 5.5}: 2 x 4 = 8 of 20 -> 0.4
    # box 1: the whole image -> 1; box 2: outside the instance -> 0; box 3 on the empty instance 1 -> 0
    ratios = mask_ratios(masks, boxes, torch.tensor([0, 0, 0, 1]))
    torch.testing.assert_close(ratios, torch.tensor([0.4, 1.0, 0.0, 0.0]))


def test_train_returns_mask_rcnn_losses_plus_loss_maskiou_and_sgd_lowers_the_total():
    model = mask_scoring_rcnn_resnet50_fpn(num_classes=3, **SMALL).train()
    assert isinstance(model.roi_heads, MaskScoringRoIHeads)
    image, target = _image_and_target()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4)
    totals = []
    for _ in range(5):
        losses = _losses(model, image, target)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_maskiou", "loss_objectness",
                               "loss_rpn_box_reg"}
        assert all(torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        totals.append(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert model.roi_heads.maskiou_head.maskiou.weight.grad.abs().sum() > 0
    assert totals[-1] < 0.8 * totals[0], totals


def test_sgd_on_the_maskiou_head_lowers_loss_maskiou():
    model = mask_scoring_rcnn_resnet50_fpn(num_classes=3, **SMALL).train()
    model.requires_grad_(False)
    head = model.roi_heads.maskiou_head.requires_grad_(True)
    image, target = _image_and_target()
    optimizer = torch.optim.SGD(head.parameters(), lr=3e-4)
    values = []
    for _ in range(5):
        loss = _losses(model, image, target)["loss_maskiou"]
        values.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(b < a for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] < 0.5 * values[0]


def test_eval_mask_scores_are_box_scores_times_the_predicted_maskiou_of_the_predicted_class():
    model = mask_scoring_rcnn_resnet50_fpn(num_classes=3, box_score_thresh=0.0, **SMALL).eval()
    image, _ = _image_and_target()
    with torch.no_grad():
        (out,) = model([image])
        assert len(out["boxes"]) > 0 and out["masks"].shape == (len(out["boxes"]), 1, SIZE, SIZE)
        # Recompute the MaskIoU for the output boxes (the transform keeps the 160x160 image as it is).
        images, _ = model.transform([image])
        features = model.backbone(images.tensors)
        heads = model.roi_heads
        roi = heads.mask_roi_pool(features, [out["boxes"]], images.image_sizes)
        logits = heads.mask_predictor(heads.mask_head(roi))
        index = torch.arange(len(out["labels"]))
        probs = logits[index, out["labels"]].sigmoid()
        maskiou = heads.maskiou_head(roi, probs[:, None])[index, out["labels"]]
    torch.testing.assert_close(out["mask_scores"], out["scores"] * maskiou)
    assert not torch.allclose(out["mask_scores"], out["scores"])
    assert out["scores"].max() <= 1 and out["labels"].min() >= 1


def test_image_without_objects_trains_and_predicts():
    model = mask_scoring_rcnn_resnet50_fpn(num_classes=3, **SMALL).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, SIZE, SIZE, dtype=torch.uint8)}
    losses = _losses(model, torch.rand(3, SIZE, SIZE), empty)
    assert losses["loss_maskiou"].item() == 0 and losses["loss_mask"].item() == 0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.no_grad():
        (out,) = model.eval()([torch.rand(3, SIZE, SIZE)])
    assert set(out) == {"boxes", "labels", "scores", "masks", "mask_scores"}
    assert out["mask_scores"].shape == out["scores"].shape


def test_torchvision_maskrcnn_state_dict_loads_with_only_maskiou_keys_missing():
    # torchvision's weights=None build (trainable BN) and its COCO_V1 layout (FrozenBatchNorm2d backbone), each
    # into both of our norm variants.
    plain = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    coco_like = MaskRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91)
    for ours in (mask_scoring_rcnn_resnet50_fpn(frozen_bn=False), mask_scoring_rcnn_resnet50_fpn()):
        maskiou_keys = {k for k in ours.state_dict() if k.startswith("roi_heads.maskiou_head.")}
        assert len(maskiou_keys) == 14
        for reference in (plain, coco_like):
            result = ours.load_state_dict(reference.state_dict(), strict=False)
            assert set(result.missing_keys) == maskiou_keys and result.unexpected_keys == []
    torch.testing.assert_close(ours.roi_heads.mask_predictor.mask_fcn_logits.weight,
                               coco_like.roi_heads.mask_predictor.mask_fcn_logits.weight)


def test_local_backbone_file_loads_into_a_frozen_bn_backbone_of_60_752_972_parameters(tmp_path):
    reference = resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = mask_scoring_rcnn_resnet50_fpn(pretrained_backbone=str(path), trainable_backbone_layers=3)
    assert count_parameters(model) == 60_752_972
    body = model.backbone.body
    torch.testing.assert_close(body.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    torch.testing.assert_close(body.bn1.running_var, reference.bn1.running_var)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.layer1[0].conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad


def test_pretrained_true_without_network_says_how_to_provide_the_file(monkeypatch):
    def offline(url, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(CheckpointError) as info:
        mask_scoring_rcnn_resnet50_fpn(pretrained_backbone=True)
    message = str(info.value)
    assert ResNet50_Weights.DEFAULT.url in message
    assert 'pretrained_backbone="/path/' in message


def test_bad_trainable_layers_is_a_config_error():
    with torch.device("meta"), pytest.raises(ConfigError, match="trainable_backbone_layers"):
        mask_scoring_rcnn_resnet50_fpn(trainable_backbone_layers=7)
