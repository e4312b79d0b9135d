"""Every bad input gets a seglab error naming the file and what was expected, through the VOC (and demo)
and folder loaders, seglab.data.io, the config loader and the checkpoint loader."""

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from seglab.checkpoint import load_weights, save_weights
from seglab.config import load_config
from seglab.data import io
from seglab.data.datasets import FolderSegmentation, VOCSegmentation
from seglab.data.io import read_image, read_label, write_label_png
from seglab.data.palettes import get_label_set
from seglab.errors import CheckpointError, ConfigError, DatasetError

VOC = get_label_set("voc")
H, W = 12, 16


def _label():
    label = np.zeros((H, W), np.uint8)
    label[2:6, 3:9] = 5
    label[2:6, 2] = 255
    return label


def make_dataset(root, kind, ids=("a", "b")):
    """A tiny dataset of the ``kind`` layout; returns {id: (image path, label path)}."""
    rng = np.random.default_rng(0)
    if kind == "voc":
        img_dir, lab_dir = root / "JPEGImages", root / "SegmentationClass"
        (root / "ImageSets" / "Segmentation").mkdir(parents=True)
        (root / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    else:
        img_dir, lab_dir = root / "images", root / "masks"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    paths = {}
    for i in ids:
        image, label = img_dir / f"{i}.jpg", lab_dir / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(image, quality=95)
        write_label_png(label, _label(), VOC)
        paths[i] = (image, label)
    return paths


def load(root, kind):
    return VOCSegmentation(root, "train") if kind == "voc" else FolderSegmentation(root)


LOADERS = ["voc", "folder"]


@pytest.mark.parametrize("kind", LOADERS)
def test_clean_dataset_loads(tmp_path, kind):
    make_dataset(tmp_path, kind)
    image, label = load(tmp_path, kind)[1]
    assert image.mode == "RGB" and image.size == (W, H)
    np.testing.assert_array_equal(label, _label())


@pytest.mark.parametrize("kind, match", [("voc", r"nowhere: VOC root folder not found"),
                                         ("folder", r"nowhere: dataset folder not found")])
def test_missing_root(tmp_path, kind, match):
    with pytest.raises(DatasetError, match=match):
        load(tmp_path / "nowhere", kind)


def test_missing_and_empty_split_list(tmp_path):
    make_dataset(tmp_path, "voc")
    with pytest.raises(DatasetError, match=r"Segmentation/val\.txt: split file not found"):
        VOCSegmentation(tmp_path, "val")
    (tmp_path / "ImageSets" / "Segmentation" / "empty.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match=r"empty\.txt: split file lists no ids"):
        VOCSegmentation(tmp_path, "empty")
    (tmp_path / "ImageSets" / "Segmentation" / "bin.txt").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(DatasetError, match=r"bin\.txt: split file is not UTF-8"):
        VOCSegmentation(tmp_path, "bin")
    make_dataset(tmp_path / "f", "folder")
    (tmp_path / "f" / "val.txt").write_text("a\nzzz\n")
    with pytest.raises(DatasetError, match=r"val\.txt: listed stems without an image: zzz"):
        FolderSegmentation(tmp_path / "f", "val")


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("which", [0, 1])
def test_listed_file_missing(tmp_path, kind, which):
    paths = make_dataset(tmp_path, kind)
    missing = paths["b"][which]
    missing.unlink()
    expected = missing.name if kind == "voc" else "b"  # the folder loader names the unpaired stem
    with pytest.raises(DatasetError, match=expected):
        load(tmp_path, kind)


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("which", [0, 1])
def test_truncated_file_fails_when_read_naming_it(tmp_path, kind, which):
    paths = make_dataset(tmp_path, kind)
    path = paths["a"][which]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = load(tmp_path, kind)
    with pytest.raises(DatasetError, match=rf"{path.name}: cannot read {('image', 'label')[which]}"):
        ds[0]
    assert ds[1][1].shape == (H, W)  # the other sample still reads


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("which", [0, 1])
def test_empty_file(tmp_path, kind, which):
    paths = make_dataset(tmp_path, kind)
    paths["a"][which].write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{paths['a'][which].name}: .* file is empty \(0 bytes\)"):
        load(tmp_path, kind)[0]


def test_corrupt_bytes_with_a_valid_header(tmp_path):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "x.png")
    data = bytearray((tmp_path / "x.png").read_bytes())
    data[40:50] = b"\x00" * 10  # inside the IDAT chunk: CRC and zlib stream are broken
    (tmp_path / "x.png").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"x\.png: cannot read image") as err:
        read_image(tmp_path / "x.png")
    assert err.value.kind == "corrupt_image"


@pytest.mark.parametrize("kind", LOADERS)
def test_rgb_label_is_refused(tmp_path, kind):
    paths = make_dataset(tmp_path, kind)
    Image.fromarray(np.stack([_label()] * 3, -1)).save(paths["a"][1])
    with pytest.raises(DatasetError, match=r"a\.png: label image has mode RGB; expected a palette \(P\)"):
        load(tmp_path, kind)[0]


@pytest.mark.parametrize("kind", LOADERS)
def test_out_of_range_label_values_are_named_when_read(tmp_path, kind):
    paths = make_dataset(tmp_path, kind)
    label = _label()
    label[0, :3] = [21, 200, 255]
    write_label_png(paths["b"][1], label, VOC)
    ds = load(tmp_path, kind)  # construction does not decode labels
    ds[0]
    match = r"b\.png: label values \[21, 200\] are >= the 21 classes of label set 'voc'"
    with pytest.raises(DatasetError, match=match):
        ds[1]


@pytest.mark.parametrize("kind", LOADERS)
def test_size_mismatch(tmp_path, kind):
    paths = make_dataset(tmp_path, kind)
    write_label_png(paths["a"][1], np.zeros((H, W - 1), np.uint8), VOC)
    match = rf"a\.png: label size {W - 1}x{H} \(WxH\) differs from image .*a\.jpg size {W}x{H}"
    with pytest.raises(DatasetError, match=match):
        load(tmp_path, kind)[0]


@pytest.mark.parametrize("kind", LOADERS)
def test_decompression_bomb_limit(tmp_path, kind, monkeypatch):
    make_dataset(tmp_path, kind)
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", H * W - 1)
    match = rf"a\.jpg: image is {W}x{H} = {W * H} pixels, more than .*MAX_IMAGE_PIXELS"
    with pytest.raises(DatasetError, match=match) as err:
        load(tmp_path, kind)[0]
    assert err.value.kind == "decompression_bomb"
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", H * W)  # exactly at the limit: read
    assert load(tmp_path, kind)[0][0].size == (W, H)


def test_pil_decompression_bomb_error_becomes_dataset_error(tmp_path, monkeypatch):
    Image.new("L", (10, 10), 7).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # PIL refuses above 2 x 40 pixels
    with pytest.raises(DatasetError, match=r"big\.png: image refused by PIL as a possible decompression bomb"):
        read_image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # 100 pixels: only PIL's warning, which seglab silences
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "big.png").getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize("kind", LOADERS)
def test_grayscale_rgba_and_16bit_images_are_converted(tmp_path, kind):
    paths = make_dataset(tmp_path, kind, ids=("g", "r", "w"))
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    for stem in paths:
        paths[stem][0].unlink()
    img_dir = paths["g"][0].parent
    Image.fromarray(gray).save(img_dir / "g.png")
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 77
    Image.fromarray(rgba).save(img_dir / "r.png")
    wide = np.full((H, W), 257 * 100, np.uint16)
    wide[0, 0], wide[0, 1] = 65535, 128  # 128 / 257 rounds to 0
    Image.fromarray(wide).save(img_dir / "w.png")
    if kind == "voc":
        # VOC lists .jpg files: give them PNG content under the .jpg name (PIL reads by content)
        for stem in paths:
            (img_dir / f"{stem}.png").rename(img_dir / f"{stem}.jpg")
    ds = load(tmp_path, kind)
    out = {stem: np.asarray(ds[i][0]) for i, stem in enumerate(ds.ids)}
    assert all(a.dtype == np.uint8 and a.shape == (H, W, 3) for a in out.values())
    np.testing.assert_array_equal(out["g"], np.stack([gray] * 3, -1))
    np.testing.assert_array_equal(out["r"][5, 5], [10, 20, 30])  # alpha dropped, colour kept
    assert out["w"][0, 0].tolist() == [255] * 3 and out["w"][0, 1].tolist() == [0] * 3
    assert out["w"][5, 5].tolist() == [100] * 3


def test_demo_loader_reports_bad_files(demo_root, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(demo_root, root)
    ds = VOCSegmentation(root, "val", label_set=get_label_set("demo_shapes"))
    ds.label_paths[2].write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{ds.label_paths[2].name}: label file is empty"):
        ds[2]
    label = np.array(Image.open(ds.label_paths[0]))
    label[0, 0] = 5  # demo_shapes has 5 classes
    write_label_png(ds.label_paths[0], label, VOC)
    with pytest.raises(DatasetError, match=r"\[5\] are >= the 5 classes of label set 'demo_shapes'"):
        ds[0]


def test_config_unknown_key_and_wrong_types_name_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {root: x, crop_sise: [1, 2]}\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'data.crop_sise'; expected one of: .*crop_size"):
        load_config(path)
    path.write_text("data: {batch_size: 2.5}\n")
    with pytest.raises(ConfigError, match=rf"{path}: key 'data.batch_size' expects int, got 2.5"):
        load_config(path)
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match=rf"{path}: .*key 'train.seed' expects int, got 'abc'"):
        load_config(path, ["train.seed=abc"])


def test_checkpoint_shape_mismatch_lists_every_mismatched_key(tmp_path):
    torch.manual_seed(0)
    saved = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    path = save_weights(tmp_path / "w.safetensors", saved.state_dict())
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1))
    before = other[2].weight.clone()
    with pytest.raises(CheckpointError) as err:
        load_weights(other, path)
    msg = str(err.value)
    assert "w.safetensors" in msg
    assert "2.weight: file (2, 4, 1, 1) vs model (5, 4, 1, 1)" in msg and "2.bias: file (2,) vs model (5,)" in msg
    assert "0.weight" not in msg  # matching keys are not listed
    assert torch.equal(other[2].weight, before)  # nothing was loaded


def test_read_label_kinds(tmp_path):
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "w.png")
    with pytest.raises(DatasetError) as err:
        read_label(tmp_path / "w.png")
    assert err.value.kind == "label_out_of_range"
    with pytest.raises(DatasetError) as err:
        read_label(tmp_path / "none.png")
    assert err.value.kind == "missing_file"
