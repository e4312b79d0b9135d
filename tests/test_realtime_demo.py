import pytest

from seglab.demos.realtime import REALTIME_MODELS, train_on_demo


@pytest.mark.slow
@pytest.mark.parametrize("name", REALTIME_MODELS)
def test_realtime_model_learns_the_demo_shapes(name, tmp_path, monkeypatch):
    """Each real-time model, trained from scratch for 500 iterations (as recorded in docs/models.md),
    gets well above chance (0.2 mIoU) on the demo shapes."""
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    result = train_on_demo(name, iters=500, output_dir=tmp_path / "runs")
    assert result["mIoU"] > 0.5, result
