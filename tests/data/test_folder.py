import numpy as np
import pytest
from PIL import Image

from seglab.data.datasets import FolderSegmentation
from seglab.errors import DatasetError


def make_folder(root, stems, image_suffix=".jpg", masks=None, size=(12, 16)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, stem in enumerate(stems):
        Image.new("RGB", size[::-1], (k * 30, 0, 0)).save(root / "images" / f"{stem}{image_suffix}")
    for k, stem in enumerate(stems if masks is None else masks):
        Image.fromarray(np.full(size, k % 3, np.uint8)).save(root / "masks" / f"{stem}.png")


def test_pairs_images_and_masks_by_stem(tmp_path):
    make_folder(tmp_path, ["b", "a", "c"], image_suffix=".png")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    ds = FolderSegmentation(tmp_path)
    assert ds.ids == ["a", "b", "c"]
    assert [p.name for p in ds.image_paths] == ["a.png", "b.png", "c.png"]
    assert [p.name for p in ds.label_paths] == ["a.png", "b.png", "c.png"]
    image, label = ds[0]
    assert image.mode == "RGB" and np.asarray(image)[0, 0, 0] == 30  # "a" was drawn second
    assert (label == 1).all()


def test_unpaired_stems_are_listed(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"], masks=["a"])
    with pytest.raises(DatasetError, match=r"images without a mask.*b, c"):
        FolderSegmentation(tmp_path)
    make_folder(tmp_path / "other", ["a"], masks=["a", "z"])
    with pytest.raises(DatasetError, match=r"masks without an image.*: z"):
        FolderSegmentation(tmp_path / "other")


def test_split_subfolder_or_list_file(tmp_path):
    make_folder(tmp_path / "train", ["t1", "t2"])
    make_folder(tmp_path / "val", ["v1"])
    assert FolderSegmentation(tmp_path, "train").ids == ["t1", "t2"]
    assert FolderSegmentation(tmp_path, "val").ids == ["v1"]

    flat = tmp_path / "flat"
    make_folder(flat, ["x", "y", "z"])
    (flat / "val.txt").write_text("z\nx\n")
    assert FolderSegmentation(flat, "val").ids == ["z", "x"]
    assert FolderSegmentation(flat).ids == ["x", "y", "z"]
    (flat / "bad.txt").write_text("x\nq\n")
    with pytest.raises(DatasetError, match=r"bad\.txt.*q"):
        FolderSegmentation(flat, "bad")


def test_missing_folder_names_the_layout(tmp_path):
    with pytest.raises(DatasetError, match="images"):
        FolderSegmentation(tmp_path / "nothing")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="masks"):
        FolderSegmentation(tmp_path)
