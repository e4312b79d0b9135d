"""Fixtures: small folders in the official layouts of Cityscapes, ADE20K, CamVid and COCO-Stuff (module-scoped:
tests that plant faults copy them first)."""

import pytest

from .layouts import write_ade20k, write_camvid, write_cityscapes, write_coco_stuff


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    return write_cityscapes(tmp_path_factory.mktemp("cs") / "cityscapes")


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return write_ade20k(tmp_path_factory.mktemp("ade") / "ADEChallengeData2016")


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    return write_camvid(tmp_path_factory.mktemp("camvid") / "CamVid")


@pytest.fixture(scope="module")
def coco_stuff(tmp_path_factory):
    return write_coco_stuff(tmp_path_factory.mktemp("cocostuff") / "cocostuff")
