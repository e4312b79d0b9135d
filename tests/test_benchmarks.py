"""The CPU benchmark suite (benchmarks/): its helpers against hand-computed values, and the runner's smoke mode
end to end. No test asserts a time."""

from __future__ import annotations

import math

import pytest
import torch

import seglab.models
from benchmarks import common, evaluator, inference, train_step
from benchmarks.run import main


def test_interleaved_runs_in_turn_and_drops_warmup():
    calls: list[str] = []
    times = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=2)
    assert calls == ["a", "b"] * 5
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_summary_median_and_iqr():
    assert common.summary([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 2.0)  # q1 2, q3 4
    median, iqr = common.summary([1.0, 2.0, 3.0, 4.0])  # linear interpolation: q1 1.75, q3 3.25
    assert median == 2.5 and iqr == pytest.approx(1.5)
    assert common.fmt_ms([0.001, 0.002, 0.003]) == "2.0 (1.0)"
    assert common.fmt_ms(None) == "-"


def test_count_flops_counts_two_per_multiply_add():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert common.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 6, 6)
    assert common.count_flops(lambda: conv(x)) == 2 * 5 * 6 * 6 * 3 * 3 * 3


def test_matmul_ceiling_is_two_n_cubed_over_the_median():
    gflops, times = common.matmul_ceiling(torch.float32, n=64, reps=3)
    assert len(times) == 3
    assert gflops == pytest.approx(2 * 64**3 / common.summary(times)[0] / 1e9)


def test_evaluator_miou_by_hand():
    # kept pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2); IoU 1/2, 2/3, 1; absent classes left out
    target = torch.tensor([[[0, 0, 1], [1, 255, 2]]], dtype=torch.uint8)
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]], dtype=torch.uint8)
    expected = (1 / 2 + 2 / 3 + 1) / 3
    assert evaluator.miou_numpy(pred, target) == pytest.approx(expected, abs=1e-12)
    assert evaluator.miou_seglab(pred, target) == pytest.approx(expected, abs=1e-12)


def test_evaluator_data_has_ignore_pixels_and_every_class():
    pred, target = evaluator.make_data(2, 64)
    assert pred.dtype == target.dtype == torch.uint8
    ignored = float((target == evaluator.IGNORE).double().mean())
    assert 0.03 < ignored < 0.07
    assert set(torch.unique(target).tolist()) == {*range(evaluator.NUM_CLASSES), evaluator.IGNORE}
    assert int(pred.max()) < evaluator.NUM_CLASSES


def test_evaluator_three_methods_agree():
    rows = evaluator.run(reps=1, threads=1, smoke=True)
    assert [r["method"] for r in rows] == list(evaluator.METHODS)
    mious = [r["miou"] for r in rows]
    assert all(not math.isnan(m) for m in mious)
    assert max(mious) - min(mious) < 1e-6
    # predictions equal the target on ~70% of pixels (+ 1/21 of the rest): the IoU is well below 1 and above 1/2
    assert 0.5 < mious[0] < 0.8
    assert all(r["pixels"] == 2 * 64 * 64 for r in rows)


def test_check_same_rejects_different_outputs():
    inference._check_same("m", torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(AssertionError, match="m"):
        inference._check_same("m", torch.zeros(2, 3), torch.ones(2, 3))


def test_smoke_run_end_to_end(tmp_path):
    out = tmp_path / "bench.md"
    text = main(["--smoke", "--threads", "1", "--out", str(out)])
    assert out.read_text() == text
    assert text.startswith("# CPU benchmarks")
    assert "`python -m benchmarks.run --smoke --threads 1 --out " in text
    assert f"torch {torch.__version__}" in text
    for heading in ("## Inference latency", "Matrix-product ceiling", "## Evaluator throughput",
                    "## Data pipeline throughput", "## Training step time", "## Chart"):
        assert heading in text
    for model in ("lraspp_mobilenet_v3_large", "mask_rcnn_resnet50_fpn", "unet_resnet34", "enet"):
        assert f"| {model} | 64x64 | 1 |" in text
    assert "| lraspp_mobilenet_v3_large | 64x64 | 1 | " in text and "| torchvision |" in text and "| smp |" in text
    for method in evaluator.METHODS:
        assert f"| {method} |" in text
    assert "| 0 |" in text and "| 2 |" in text
    assert "| unet_resnet34 | 64x64 | 2 | " in text and "| bisenetv2 | 64x64 | 2 | " in text  # training steps
    # the compiled bf16 column is timed for the models with a speed target (LR-ASPP here), not for the others
    lraspp = next(line for line in text.splitlines() if line.startswith("| lraspp_mobilenet_v3_large | 64x64"))
    enet = next(line for line in text.splitlines() if line.startswith("| enet | 64x64"))
    assert lraspp.split(" | ")[9] != "-" and "%]" in lraspp.split(" | ")[9]
    assert enet.split(" | ")[9] == "-"
    png = tmp_path / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![benchmarks](bench.png)" in text


def test_train_step_is_one_sgd_step_on_the_cross_entropy():
    """make_step's first step moves each weight by -lr * grad of the mean cross-entropy (momentum buffer = grad)."""
    model = torch.nn.Conv2d(3, 4, 1)
    images = torch.randn(2, 3, 5, 5)
    targets = torch.randint(0, 4, (2, 5, 5))
    targets[0, 0, 0] = 255  # ignored
    before = [p.detach().clone() for p in model.parameters()]
    expected_loss = torch.nn.functional.cross_entropy(model(images), targets, ignore_index=255)
    grads = torch.autograd.grad(expected_loss, list(model.parameters()))
    step = train_step.make_step(model, images, targets)
    loss = step()
    assert loss == pytest.approx(float(expected_loss.detach()), rel=1e-6)
    for p, p0, g in zip(model.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 1e-4 * g, rtol=0, atol=1e-7)
    assert model.training


def test_train_step_smoke_rows_pair_unet_with_smp():
    rows = train_step.run(reps=1, threads=1, smoke=True)
    assert [(r["model"], r["reference"]) for r in rows] == [("unet_resnet34", "smp"), ("bisenetv2", "-")]
    assert set(rows[0]["times"]) == {"seglab", "smp"} and set(rows[1]["times"]) == {"seglab"}
    assert all(len(v) == 1 for r in rows for v in r["times"].values())
    table = train_step.markdown(rows)
    assert table.startswith("## Training step time") and "| unet_resnet34 | 64x64 | 2 | " in table


def test_unet_pairs_start_from_the_same_weights():
    ours, reference = train_step._models("unet_resnet34")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=1e-5, atol=1e-5)
    assert train_step._models("bisenetv2")[1] is None


def test_own_models_include_schp_only_when_registered(monkeypatch):
    registered = seglab.models.list_models()
    assert inference.own_models()[:len(inference.OWN_MODELS)] == inference.OWN_MODELS
    assert ("schp_resnet101" in inference.own_models()) == ("schp_resnet101" in registered)
    monkeypatch.setattr(seglab.models, "list_models", lambda task=None: [n for n in registered if "schp" not in n])
    assert inference.own_models() == inference.OWN_MODELS
    monkeypatch.setattr(seglab.models, "list_models", lambda task=None: [*registered, "schp_resnet101"])
    assert inference.own_models() == (*inference.OWN_MODELS, "schp_resnet101")


def test_models_flag_restricts_the_inference_section(tmp_path):
    out = tmp_path / "bench.md"
    text = main(["--smoke", "--threads", "1", "--only", "inference", "--models", "enet", "--out", str(out)])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "x64 |" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| enet"]
    assert "## Chart" not in text and not (tmp_path / "bench.png").exists()  # the chart needs every section
    with pytest.raises(SystemExit):
        main(["--smoke", "--models", "no_such_model", "--out", str(out)])


def test_serve_load_test_smoke_mode(tmp_path):
    """benchmarks/serve.py end to end in smoke mode: a real `seglab serve` subprocess on loopback, every
    concurrency level answered without failures, the encodings timed, the soak's memory sampled (numbers mean
    nothing at this size)."""
    import json

    from benchmarks import serve

    out, raw = tmp_path / "serving.md", tmp_path / "serving.json"
    assert serve.main(["--smoke", "--out", str(out), "--json", str(raw)]) == 0
    (row,) = json.loads(raw.read_text())["rows"]
    assert [r["clients"] for r in row["load"]] == [1, 4, 16]
    assert all(r["failures"] == 0 and r["requests"] == 8 and r["images_per_s"] > 0 for r in row["load"])
    assert row["soak"]["failures"] == 0 and row["soak"]["requests_total"] == 20 and row["soak"]["rss_end_mib"] > 0
    assert set(row["encoding_ms"]) == {"png (zlib 1, served)", "png (zlib 6, Pillow default)", "rle (per class)",
                                       "polygons (per class)", "overlay (png)"}
    text = out.read_text()
    assert "## Targets" in text and "| lraspp_mobilenet_v3_large | 64 |" in text
