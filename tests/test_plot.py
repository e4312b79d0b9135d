"""`seglab plot` and the val records' confusion matrix it draws."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from seglab.cli import main
from seglab.data.palettes import get_label_set
from seglab.engine.evaluator import ConfusionMatrix, evaluate
from seglab.visualize import normalize_confusion, plot_run, run_class_names

PLOTS = {"loss_lr.png", "val_miou.png", "per_class_iou.png", "confusion.png"}


def _write_run(run, val_extra=True, palette="demo_shapes"):
    records = []
    for it in (10, 20, 30, 40):
        records.append({"iter": it, "lr": 0.01 * (1 - it / 50), "loss": 2.0 / it, "it_per_s": 4.0})
        if it % 20 == 0:
            val = {"iter": it, "split": "val", "aAcc": 0.8, "mIoU": 0.4 + it / 100}
            if val_extra:
                val["IoU"] = [0.9, 0.5, None, 0.1 * it / 20]
                val["confusion"] = [[50, 2, 0, 1], [3, 20, 0, 0], [0, 0, 0, 0], [4, 0, 0, 8]]
            records.append(val)
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if palette:
        (run / "config.yaml").write_text(f"name: r\ndata:\n  palette: {palette}\nmodel:\n  num_classes: 4\n")


def test_normalize_confusion_rows_sum_to_one_and_zero_row_stays_zero():
    counts = [[3, 1, 0], [0, 0, 0], [2, 2, 4]]
    expected = [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]
    np.testing.assert_allclose(normalize_confusion(counts), expected)
    assert not np.isnan(normalize_confusion(counts)).any()
    with pytest.raises(ValueError, match="square"):
        normalize_confusion([[1, 2, 3]])


def test_seg_metrics_carry_the_hand_computed_confusion_matrix():
    # 2x3 label and prediction, one ignored pixel: pairs (gt, pred) (0,0) (0,1) (1,1) (2,2) (2,0)
    gt = torch.tensor([[0, 0, 1], [2, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [2, 0, 1]])
    expected = [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    assert cm.compute().to_dict()["confusion"] == expected

    class FixedPrediction(nn.Module):  # logits whose argmax is `pred`, whatever the image
        def forward(self, x):
            return 10.0 * nn.functional.one_hot(pred, 3).permute(2, 0, 1)[None].float().expand(len(x), -1, -1, -1)

    dataset = [(torch.zeros(3, 2, 3), gt)]
    d = evaluate(FixedPrediction(), dataset, num_classes=3).to_dict()
    assert d["confusion"] == expected
    assert all(type(v) is int for row in d["confusion"] for v in row)
    json.dumps(d)  # JSON-safe, as the trainer logs it
    assert d["IoU"] == pytest.approx([1 / 3, 0.5, 0.5])  # the IoUs derive from the same matrix


def test_seglab_plot_writes_the_four_pngs(tmp_path, capsys):
    run = tmp_path / "run"
    _write_run(run)
    assert main(["plot", str(run)]) == 0
    written = {p.name for p in (run / "plots").iterdir()}
    assert written == PLOTS  # and no stray temporary files
    for name in PLOTS:
        with Image.open(run / "plots" / name) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 300
            # something was drawn: more than a handful of colours
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 10
    assert set(capsys.readouterr().out.split()) == {str(run / "plots" / n) for n in PLOTS}
    assert run_class_names(run) == list(get_label_set("demo_shapes").classes)


def test_plot_out_dir_and_instance_run_skips_per_class_and_confusion(tmp_path, caplog):
    run = tmp_path / "run"
    _write_run(run, val_extra=False, palette=None)
    with caplog.at_level(logging.WARNING, logger="seglab.visualize"):
        paths = plot_run(run, tmp_path / "out")
    assert [p.name for p in paths] == ["loss_lr.png", "val_miou.png"]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"loss_lr.png", "val_miou.png"}
    assert "per_class_iou.png not drawn" in caplog.text and "confusion.png not drawn" in caplog.text
    assert not (run / "plots").exists()


def test_plot_errors_name_the_file(tmp_path):
    with pytest.raises(SystemExit, match=r"seglab plot: error: .*metrics\.jsonl: no such file"):
        main(["plot", str(tmp_path)])
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"iter": 1, "lr": 0.1, "loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: no val record"):
        plot_run(tmp_path)
