from pathlib import Path

import pytest

import seglab
from seglab.model_table import count_at_paper_setting, models_markdown

ROOT = Path(__file__).resolve().parents[1]

PAPER_COUNTS = {
    "fcn32s_vgg16": 134_346_581,
    "fcn16s_vgg16": 134_357_354,
    "fcn8s_vgg16": 134_362_751,
    "unet": 31_030_658,
}


def test_list_models_and_tasks():
    names = seglab.list_models()
    assert set(PAPER_COUNTS) <= set(names)
    assert set(PAPER_COUNTS) <= set(seglab.list_models(task="semantic"))
    assert "unet" not in seglab.list_models(task="instance")
    with pytest.raises(ValueError, match="unknown task"):
        seglab.list_models(task="panoptic")


def test_model_info_facts():
    info = seglab.model_info("fcn8s_vgg16")
    assert info.task == "semantic" and info.year == 2015 and "Fully Convolutional" in info.paper
    assert len(info.input_size) == 2
    assert seglab.model_info("unet").paper.startswith("U-Net")


def test_unknown_model_lists_available():
    with pytest.raises(KeyError, match="fcn8s_vgg16"):
        seglab.create_model("fcn9s")


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_setting_parameter_counts_are_exact(name):
    assert count_at_paper_setting(name) == PAPER_COUNTS[name]
    assert seglab.model_info(name).paper_params == PAPER_COUNTS[name]


def test_docs_models_md_is_current():
    text = (ROOT / "docs" / "models.md").read_text()
    assert text == models_markdown(ROOT / "docs"), "docs/models.md is stale: run `python scripts/gen_model_docs.py`"


def test_flops_match_torchvision_published_figure():
    # torchvision publishes lraspp_mobilenet_v3_large at 2.086 GFLOPS (= GMACs) for a 520x520 input;
    # the flop counter counts 2 FLOPs per multiply-add. LR-ASPP has no auxiliary head, so eval = meta.
    from seglab.model_table import flops_at_paper_setting

    gmacs = flops_at_paper_setting("lraspp_mobilenet_v3_large", (520, 520)) / 2e9
    assert gmacs == pytest.approx(2.086, abs=0.001)
