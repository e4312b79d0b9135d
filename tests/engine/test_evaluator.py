import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.engine.evaluator import ConfusionMatrix, SegMetrics, evaluate, metrics_to_text

# 3 classes, 12 pixels: two ignore (255) and one out-of-range (5) ground-truth pixels are dropped.
GT = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 2], [2, 255, 255, 5]])
PRED = torch.tensor([[0, 0, 1, 0], [1, 1, 2, 2], [0, 1, 0, 2]])
# kept pairs (gt, pred): (0,0) x3, (0,1), (1,1) x2, (1,2), (2,2), (2,0)
HIST = [[3, 1, 0],
        [0, 2, 1],
        [1, 0, 1]]


def test_confusion_matrix_matches_hand_computation():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    assert cm.hist.dtype == torch.int64
    assert cm.hist.tolist() == HIST
    m = cm.compute()
    # row sums (gt) 4, 3, 2; column sums (pred) 4, 3, 2; diagonal 3, 2, 1; total 9
    assert m.aAcc == pytest.approx(6 / 9)                    # 0.666667
    np.testing.assert_allclose(m.acc, [3 / 4, 2 / 3, 1 / 2])  # 0.75, 0.666667, 0.5
    assert m.mAcc == pytest.approx(0.638889, abs=1e-6)        # (0.75 + 0.666667 + 0.5) / 3
    # IoU = tp / (row + col - tp): 3/5, 2/4, 1/3
    np.testing.assert_allclose(m.iou, [0.6, 0.5, 1 / 3])
    assert m.mIoU == pytest.approx(0.477778, abs=1e-6)        # (0.6 + 0.5 + 0.333333) / 3
    assert m.fwIoU == pytest.approx(0.507407, abs=1e-6)       # (4*0.6 + 3*0.5 + 2/3) / 9


def test_absent_class_is_nan_and_left_out_of_the_mean():
    cm = ConfusionMatrix(4)  # class 3: in neither gt nor prediction
    cm.update(PRED, GT)
    m = cm.compute()
    assert math.isnan(m.iou[3]) and math.isnan(m.acc[3])
    assert m.mIoU == pytest.approx(0.477778, abs=1e-6)
    assert m.mAcc == pytest.approx(0.638889, abs=1e-6)
    d = m.to_dict()
    assert d["IoU"][3] is None and d["Acc"][3] is None and d["mIoU"] == pytest.approx(m.mIoU)


def test_class_predicted_but_absent_from_gt_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 1]))
    m = cm.compute()
    # class 2: tp 0, union 2 -> IoU 0 (counted); Acc NaN (no gt pixels)
    assert m.iou[2] == 0.0 and math.isnan(m.acc[2])
    np.testing.assert_allclose(m.iou, [1.0, 1 / 3, 0.0])
    assert m.mIoU == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m.mAcc == pytest.approx((1 + 1 / 3) / 2)


def test_nothing_counted_gives_nan_without_error():
    m = ConfusionMatrix(3).compute()
    assert math.isnan(m.mIoU) and math.isnan(m.aAcc) and math.isnan(m.fwIoU)
    assert m.to_dict()["mIoU"] is None
    assert "mIoU" in metrics_to_text(m, ["a", "b", "c"])


def test_merge_equals_one_matrix_over_both():
    g = torch.Generator().manual_seed(0)
    gt1, gt2 = torch.randint(0, 5, (2, 7, 9), generator=g)
    pr1, pr2 = torch.randint(0, 5, (2, 7, 9), generator=g)
    gt1[0, :4] = 255
    a, b, both = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(pr1, gt1)
    b.update(pr2, gt2)
    both.update(torch.stack([pr1, pr2]), torch.stack([gt1, gt2]))
    assert torch.equal(a.merge(b).hist, both.hist)
    assert a.compute().mIoU == both.compute().mIoU
    a.reset()
    assert int(a.hist.sum()) == 0


def test_out_of_range_and_ignore_gt_dropped_but_bad_pred_rejected():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 255, 7, -1]))
    assert cm.hist.tolist() == [[1, 0], [0, 0]]
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        cm.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_all_reduce_single_process(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cm = ConfusionMatrix(3)
        cm.update(PRED, GT)
        assert cm.all_reduce().hist.tolist() == HIST
    finally:
        dist.destroy_process_group()


def test_metrics_to_text_lists_every_class_and_the_summary():
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    text = metrics_to_text(cm.compute(), ["background", "cat", "dog", "ghost"])
    for name in ("background", "cat", "dog", "ghost", "mIoU", "aAcc", "mAcc", "fwIoU"):
        assert name in text
    assert "47.78" in text and "60.00" in text  # mIoU and IoU of class 0, in percent


class Oracle(nn.Module):
    """Reads the label from image channel 0 and returns its one-hot as logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.norm = nn.BatchNorm2d(3)  # a submodule whose flag must come back as it was

    def forward(self, x):
        label = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        return F.one_hot(label, self.num_classes).permute(0, 3, 1, 2).float() * 10


def _dataset(sizes, num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for h, w in sizes:
        label = torch.randint(0, num_classes, (h, w), generator=g)
        image = torch.randn(3, h, w, generator=g)
        image[0] = label.float()
        mask = label.clone()
        mask[0, :3] = 255
        items.append((image, mask))
    return items


def test_evaluate_oracle_mixed_sizes_restores_training_flags():
    model = Oracle(4)
    model.train()
    model.norm.eval()
    data = _dataset([(20, 24), (20, 24), (17, 31), (20, 24), (9, 9)])
    metrics = evaluate(model, data, num_classes=4, batch_size=3)
    assert isinstance(metrics, SegMetrics)
    assert metrics.mIoU == 1.0 and metrics.aAcc == 1.0 and metrics.fwIoU == pytest.approx(1.0)
    assert model.training and not model.norm.training
    slide = evaluate(model, data, num_classes=4, batch_size=2, mode="slide", crop_size=(8, 8), stride=(5, 5),
                     scales=(1.0,), flip=True)
    assert slide.mIoU == pytest.approx(1.0)


def test_evaluate_counts_like_a_confusion_matrix():
    class AlwaysZero(nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
            logits[:, 0] = 1
            return {"out": logits}

    data = _dataset([(6, 5), (7, 4)], num_classes=3, seed=1)
    expected = ConfusionMatrix(3)
    for _, mask in data:
        expected.update(torch.zeros_like(mask), mask)
    metrics = evaluate(AlwaysZero(), data, num_classes=3, batch_size=2)
    assert metrics.mIoU == pytest.approx(expected.compute().mIoU)
    assert metrics.aAcc == pytest.approx(expected.compute().aAcc)
    assert metrics.iou[1] == 0.0


def test_evaluate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        evaluate(Oracle(2), _dataset([(4, 4)], 2), num_classes=2, mode="tiles")
    with pytest.raises(ValueError, match="float"):
        evaluate(Oracle(2), [(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(4, 4))], num_classes=2)


def test_evaluate_leaves_the_global_rng_alone():
    data = _dataset([(6, 6), (6, 6)], num_classes=2)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    evaluate(Oracle(2), data, num_classes=2)
    assert torch.equal(torch.rand(3), expected)  # mid-training evaluation must not shift augmentation
