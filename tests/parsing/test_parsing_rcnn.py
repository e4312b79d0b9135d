import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import fasterrcnn_resnet50_fpn

import seglab.models.parsing.parsing_rcnn as prcnn
from seglab.engine.people import semantic_from_instances
from seglab.errors import CheckpointError, DatasetError
from seglab.models import count_parameters, model_info
from seglab.models.parsing.parsing_rcnn import (
    GCEHead,
    NonLocal2d,
    ParsingPredictor,
    parsing_rcnn_resnet50_fpn,
    paste_parsing_in_image,
    project_parsing_on_boxes,
)

H, W = 160, 192
SMALL = {  # small images and few RoIs: a few CPU seconds per step
    "min_size": H, "max_size": W, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 30, "box_detections_per_img": 3,
    "box_score_thresh": 0.0, "parsing_rois_per_image": 2,
    "frozen_bn": False,  # trained from random weights here: FrozenBatchNorm2d would not normalise at all
}


def _image_and_target():
    """Two persons: person 0 (hat 1 over upper-clothes 5), person 1 (pants 9 with a left leg 16)."""
    image = torch.rand(3, H, W)
    parsing = torch.zeros(2, H, W, dtype=torch.int64)
    parsing[0, 20:60, 20:60] = 1
    parsing[0, 60:100, 20:60] = 5
    parsing[1, 30:140, 100:170] = 9
    parsing[1, 100:140, 100:130] = 16
    target = {
        "boxes": torch.tensor([[20.0, 20, 60, 100], [100, 30, 170, 140]]),
        "labels": torch.tensor([1, 1]),
        "masks": (parsing > 0).to(torch.uint8),
        "parsing": parsing,
        "image_id": 0,
    }
    return image, target


def _empty_target():
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, H, W, dtype=torch.uint8), "parsing": torch.zeros(0, H, W, dtype=torch.int64)}


def test_has_54_511_597_parameters_at_20_classes_fasterrcnn_plus_the_gce_branch():
    head_by_hand = (
        2 * (256 * 256 + 256)  # image pooling 1x1 and ASPP 1x1
        + 3 * (256 * 256 * 9 + 256)  # ASPP 3x3 at rates 6, 12, 18
        + (1280 * 512 + 512)  # 1x1 projection of the 1280-channel concat
        + 4 * (512 * 512 + 512) + 2 * 512  # non-local theta, phi, g, out + GroupNorm
        + 4 * (512 * 512 * 9 + 512)  # four 3x3 convs
    )
    predictor_by_hand = 512 * 20 * 4 * 4 + 20
    assert head_by_hand == 13_048_576 and predictor_by_hand == 163_860
    with torch.device("meta"):
        model = parsing_rcnn_resnet50_fpn()
        trainable_bn = parsing_rcnn_resnet50_fpn(frozen_bn=False)
        detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    assert count_parameters(model.roi_heads.parsing_head) == head_by_hand
    assert count_parameters(model.roi_heads.parsing_predictor) == predictor_by_hand
    assert count_parameters(model) == 54_511_597
    # torchvision's trainable-BN Faster R-CNN (2 classes) + the parsing branch; FrozenBN drops 53,120 BN affines.
    assert count_parameters(trainable_bn) == count_parameters(detector) + 13_212_436 == 54_564_717
    assert count_parameters(trainable_bn) - count_parameters(model) == 53_120
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # background, person


def test_registered_as_a_parsing_model():
    info = model_info("parsing_rcnn_resnet50_fpn")
    assert (info.task, info.paper, info.year, info.input_size) == ("parsing", "Parsing R-CNN", 2019, (800, 1333))
    assert info.url == "https://arxiv.org/abs/1811.12596"


def test_parsing_rois_are_pooled_32x32_from_p2_the_stride_4_level():
    model = parsing_rcnn_resnet50_fpn(**SMALL).eval()
    pool = model.roi_heads.parsing_roi_pool
    assert pool.featmap_names == ["0"] and tuple(pool.output_size) == (32, 32) and pool.sampling_ratio == 2
    with torch.no_grad():
        features = model.backbone(torch.rand(1, 3, 160, 192))
    assert features["0"].shape[-2:] == (40, 48)  # stride 4


def test_gce_head_gives_r_c_128_128_through_aspp_concat_of_1280_and_no_batchnorm():
    head, predictor = GCEHead(256), ParsingPredictor(512, 20)
    seen = []
    head.project.register_forward_hook(lambda m, i, o: seen.append((i[0].shape[1], o.shape[1])))
    with torch.no_grad():
        out = predictor(head(torch.randn(3, 256, 32, 32)))
    assert out.shape == (3, 20, 128, 128)
    assert seen == [(1280, 512)]
    assert [branch[0].dilation for branch in head.aspp] == [(1, 1), (6, 6), (12, 12), (18, 18)]
    assert len(head.convs) == 4 and all(c[0].kernel_size == (3, 3) for c in head.convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    assert predictor.parsing_score_lowres.stride == (2, 2) and predictor.parsing_score_lowres.kernel_size == (4, 4)


def test_image_pooling_branch_is_constant_over_the_roi():
    head = GCEHead(8, aspp_channels=4, conv_channels=32, num_convs=1)
    x = torch.randn(2, 8, 6, 6)
    pooled = head.image_pool[1](x.mean(dim=(2, 3), keepdim=True))
    concat = []
    head.project.register_forward_hook(lambda m, i, o: concat.append(i[0]))
    with torch.no_grad():
        head(x)
    torch.testing.assert_close(concat[0][:, :4], pooled.expand(-1, -1, 6, 6))


def test_nonlocal_block_matches_the_embedded_gaussian_formula():
    block = NonLocal2d(32, 16).eval()
    for p in block.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 32, 6, 4)
    theta = torch.einsum("oc,nchw->nohw", block.theta.weight[:, :, 0, 0], x) + block.theta.bias[:, None, None]
    pooled = F.max_pool2d(x, 2)
    phi = torch.einsum("oc,nchw->nohw", block.phi.weight[:, :, 0, 0], pooled) + block.phi.bias[:, None, None]
    g = torch.einsum("oc,nchw->nohw", block.g.weight[:, :, 0, 0], pooled) + block.g.bias[:, None, None]
    weights = torch.einsum("nchw,ncab->nhwab", theta, phi) / 16**0.5  # every position against the pooled ones
    weights = weights.flatten(3).softmax(-1).reshape(weights.shape)
    t = torch.einsum("nhwab,ncab->nchw", weights, g)
    expected = x + block.gn(block.out(t))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)
    # As initialised (GroupNorm affine 1, 0) the block is a residual: zero output conv -> identity.
    fresh = NonLocal2d(32)
    nn.init.zeros_(fresh.out.weight)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), x)


def test_target_crop_of_the_left_half_box_is_all_label_5():
    parsing = torch.zeros(2, 8, 8, dtype=torch.int64)
    parsing[1, :, :4] = 5
    parsing[1, :, 4:] = 3
    boxes = torch.tensor([[0.0, 0, 4, 8], [4, 0, 8, 8], [2, 0, 6, 8], [0, 0, 4, 8]])
    out = project_parsing_on_boxes(parsing, boxes, torch.tensor([1, 1, 1, 0]), 4)
    assert out.dtype == torch.int64 and out.shape == (4, 4, 4)
    assert (out[0] == 5).all() and (out[1] == 3).all()
    # Sample points x = 2 + (j + 0.5) for j = 0..3 -> pixels 2, 3, 4, 5 -> labels 5, 5, 3, 3 on every row.
    assert out[2].tolist() == [[5, 5, 3, 3]] * 4
    assert (out[3] == 0).all()  # matched to person 0, which has no parts there
    assert project_parsing_on_boxes(parsing, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 4).shape == (
        0, 4, 4)


def test_training_targets_crop_the_dataset_resolution_map_with_boxes_scaled_back(monkeypatch):
    # The model resizes the 160x192 image to 320x384 (min_size 320): RoIs are in that frame, the part maps are not.
    calls = []
    original = prcnn.project_parsing_on_boxes

    def spy(parsing, boxes, matched_idxs, size):
        out = original(parsing, boxes, matched_idxs, size)
        calls.append((parsing, boxes.clone(), matched_idxs.clone(), out))
        return out

    monkeypatch.setattr(prcnn, "project_parsing_on_boxes", spy)
    model = parsing_rcnn_resnet50_fpn(**{**SMALL, "min_size": 320, "max_size": 384, "parsing_rois_per_image": None})
    image, target = _image_and_target()
    model([image], [target])
    (parsing, boxes, matched, out), = calls
    assert parsing.shape == (2, H, W) and out.shape == (len(boxes), 128, 128)
    # The GT boxes are among the proposals; scaled back they are the dataset's boxes again.
    gt_rows = [i for i, b in enumerate(boxes) if torch.allclose(b, target["boxes"][0], atol=1e-3)]
    assert gt_rows and (matched[gt_rows[0]] == 0)
    crop = out[gt_rows[0]]
    assert (crop[:64] == 1).all() and (crop[64:] == 5).all()  # hat over the top half, upper clothes below


def test_train_forward_returns_detection_losses_and_loss_parsing_all_finite():
    model = parsing_rcnn_resnet50_fpn(**SMALL)
    image, target = _image_and_target()
    losses = model([image], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_parsing"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_parsing"] > 0


def test_parsing_loss_is_twice_the_cross_entropy_over_the_roi_targets(monkeypatch):
    model = parsing_rcnn_resnet50_fpn(**SMALL)
    captured = {}
    original = model.roi_heads.parsing_logits

    def keep(*args):
        captured["logits"] = original(*args)
        return captured["logits"]

    targets = []
    project = prcnn.project_parsing_on_boxes
    monkeypatch.setattr(model.roi_heads, "parsing_logits", keep)
    monkeypatch.setattr(prcnn, "project_parsing_on_boxes", lambda *a: targets.append(project(*a)) or targets[-1])
    image, target = _image_and_target()
    losses = model([image], [target])
    expected = 2.0 * F.cross_entropy(captured["logits"], targets[0])
    torch.testing.assert_close(losses["loss_parsing"], expected)
    assert captured["logits"].shape[0] == 2  # parsing_rois_per_image positives sampled


def test_a_few_sgd_steps_on_one_batch_lower_the_loss():
    # From scratch the unnormalised head needs a small step (the reference warms up from lr 0.02 x 0.01).
    model = parsing_rcnn_resnet50_fpn(**{**SMALL, "parsing_rois_per_image": 1})
    image, target = _image_and_target()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    totals, parsing = [], []
    for _ in range(3):
        torch.manual_seed(1)  # the same proposal and RoI sampling at every step
        losses = model([image], [target])
        total = sum(losses.values())
        totals.append(total.item())
        parsing.append(losses["loss_parsing"].item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert totals[2] < totals[1] < totals[0]
    assert parsing[2] < parsing[0]


def test_eval_outputs_at_an_odd_size_paste_parsing_inside_the_boxes():
    model = parsing_rcnn_resnet50_fpn(**SMALL).eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 161, 203)])
    assert set(out) == {"boxes", "labels", "scores", "parsing", "parsing_scores"}
    n = out["boxes"].shape[0]
    assert n == 3
    assert out["parsing"].shape == (n, 161, 203) and out["parsing"].dtype == torch.int64
    assert out["labels"].tolist() == [1] * n
    torch.testing.assert_close(out["parsing_scores"], out["scores"])
    assert out["parsing"].any()  # some parts are predicted (untrained, but not all background)
    for person, box in zip(out["parsing"], out["boxes"], strict=True):
        rows, cols = torch.nonzero(person, as_tuple=True)
        if rows.numel():  # every predicted part pixel lies inside the person's box
            assert cols.min() + 0.5 >= box[0] and cols.max() + 0.5 <= box[2]
            assert rows.min() + 0.5 >= box[1] and rows.max() + 0.5 <= box[3]
    assert int(out["parsing"].max()) < 20


def test_an_image_without_persons_works_in_train_and_eval():
    model = parsing_rcnn_resnet50_fpn(**SMALL)
    image, target = _image_and_target()
    losses = model([image, torch.rand(3, H, W)], [target, _empty_target()])
    assert all(torch.isfinite(v) for v in losses.values())
    losses = model([torch.rand(3, H, W)], [_empty_target()])
    assert losses["loss_parsing"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    sum(losses.values()).backward()
    model.eval()
    model.roi_heads.score_thresh = 1.1  # nothing detected
    with torch.no_grad():
        (out,) = model([torch.rand(3, 97, 131)])
    assert out["boxes"].shape == (0, 4) and out["parsing"].shape == (0, 97, 131)
    assert out["parsing_scores"].shape == (0,)


def test_a_target_without_parsing_is_a_dataset_error():
    model = parsing_rcnn_resnet50_fpn(**SMALL)
    image, target = _image_and_target()
    del target["parsing"]
    with pytest.raises(DatasetError, match="parsing"):
        model([image], [target])


def test_paste_puts_the_parts_inside_the_box_and_0_outside():
    probs = torch.zeros(1, 20, 128, 128)
    probs[0, 3, :, :64] = 1.0  # left half: part 3
    probs[0, 7, :, 64:] = 1.0  # right half: part 7
    out = paste_parsing_in_image(probs, torch.tensor([[10.0, 20, 50, 60]]), (80, 100))
    assert out.shape == (1, 80, 100) and out.dtype == torch.int64
    expected = torch.zeros(80, 100, dtype=torch.int64)
    expected[20:60, 10:30] = 3  # pixel centres 10.5..29.5 fall in the left half of [10, 50]
    expected[20:60, 30:50] = 7
    assert torch.equal(out[0], expected)
    # A box partly outside the image is clipped; one with no pixel centre inside gives nothing.
    out = paste_parsing_in_image(probs.repeat(2, 1, 1, 1), torch.tensor([[-20.0, -5, 20, 10], [3.6, 3.6, 4.4, 4.4]]),
                                 (30, 30))
    # Pixels 0..19 x 0..9 lie in the right half of [-20, 20] x [-5, 10]: part 7.
    assert (out[0, :10, :20] == 7).all() and (out[0, 10:] == 0).all() and (out[0, :, 20:] == 0).all()
    assert (out[1] == 0).all()


def test_paste_is_bilinear_on_probabilities_then_argmax():
    # Two parts whose probabilities cross in the middle of the map: the boundary lands in the middle of the box.
    ramp = torch.linspace(0, 1, 128)
    probs = torch.zeros(1, 3, 128, 128)
    probs[0, 1] = (1 - ramp)[None, :]
    probs[0, 2] = ramp[None, :]
    out = paste_parsing_in_image(probs, torch.tensor([[0.0, 0, 64, 8]]), (8, 64))
    assert (out[0, :, :32] == 1).all() and (out[0, :, 32:] == 2).all()


def test_semantic_from_instances_paints_higher_scores_on_top_and_drops_low_scores():
    parsing = torch.zeros(3, 4, 6, dtype=torch.int64)
    parsing[0, :, 0:4] = 5  # score 0.9
    parsing[1, :, 2:6] = 9  # score 0.6: overlaps person 0 on columns 2-3
    parsing[1, 0, 0] = 2
    parsing[2, :, :] = 13  # score 0.2: below the threshold
    result = {"parsing": parsing, "parsing_scores": torch.tensor([0.9, 0.6, 0.2])}
    merged = semantic_from_instances(result, (4, 6))
    expected = torch.tensor([[5, 5, 5, 5, 9, 9]] * 4)
    assert merged.dtype == torch.int64 and torch.equal(merged, expected)
    # Lowering the threshold lets the third person in, under the other two; person 1's own background (0)
    # never erases what is below it.
    merged = semantic_from_instances(result, (4, 6), score_threshold=0.1)
    assert torch.equal(merged, expected)
    result["parsing"][0, 3, 0] = 0
    assert semantic_from_instances(result, (4, 6), score_threshold=0.1)[3, 0] == 13
    empty = {"parsing": torch.zeros(0, 4, 6, dtype=torch.int64), "parsing_scores": torch.zeros(0)}
    assert torch.equal(semantic_from_instances(empty, (4, 6)), torch.zeros(4, 6, dtype=torch.int64))


def test_pretrained_true_without_network_says_how_to_provide_the_file(monkeypatch):
    def offline(url, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(CheckpointError) as info:
        parsing_rcnn_resnet50_fpn(pretrained_backbone=True)
    assert ResNet50_Weights.DEFAULT.url in str(info.value)
    assert 'pretrained_backbone="/path/' in str(info.value)
