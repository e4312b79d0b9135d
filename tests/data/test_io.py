import numpy as np
import pytest
from PIL import Image

from seglab.data.io import read_image, read_label, write_label_png
from seglab.data.palettes import get_label_set
from seglab.errors import DatasetError


def test_palette_png_is_read_as_indices_not_colours(tmp_path):
    label = np.zeros((8, 10), np.uint8)
    label[2:5, 3:7] = 1
    label[0, 0] = 255
    img = Image.fromarray(label)
    img.putpalette([0, 0, 0, 200, 30, 40] + [0] * (768 - 6))  # index 1 is coloured (200, 30, 40)
    assert img.mode == "P"
    img.save(tmp_path / "l.png")
    out = read_label(tmp_path / "l.png")
    assert out.dtype == np.uint8 and out.shape == (8, 10)
    np.testing.assert_array_equal(out, label)


def test_grayscale_and_16bit_labels_are_indices(tmp_path):
    label = np.array([[0, 3], [255, 7]], np.uint8)
    Image.fromarray(label).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), label)
    Image.fromarray(label.astype(np.uint16)).save(tmp_path / "w.png")
    np.testing.assert_array_equal(read_label(tmp_path / "w.png"), label)
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(DatasetError, match="big.png"):
        read_label(tmp_path / "big.png")


def test_rgb_label_is_refused_naming_the_file(tmp_path):
    Image.new("RGB", (4, 4), (128, 0, 0)).save(tmp_path / "rgb_label.png")
    with pytest.raises(DatasetError, match=r"rgb_label\.png.*palette \(P\) or grayscale \(L\)"):
        read_label(tmp_path / "rgb_label.png")


def test_truncated_and_empty_images_raise_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(DatasetError, match="empty.jpg"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(DatasetError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(DatasetError, match="empty.jpg"):
        read_label(tmp_path / "empty.jpg")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_read_image_returns_8bit_rgb(tmp_path, mode):
    if mode == "I;16":
        img = Image.fromarray(np.full((5, 6), 65535, np.uint16))
    else:
        img = Image.new(mode, (6, 5), 200 if mode in ("L", "P") else (10, 20, 30, 128))
    img.save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    assert out.mode == "RGB" and out.size == (6, 5)
    if mode == "I;16":
        assert np.asarray(out).min() == 255


def test_write_label_png_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    label = rng.integers(0, 21, (17, 23), dtype=np.uint8)
    label[0] = 255
    voc = get_label_set("voc")
    path = write_label_png(tmp_path / "sub" / "out.png", label, voc)
    assert path == tmp_path / "sub" / "out.png"
    with Image.open(path) as img:
        assert img.mode == "P"
        assert bytes(img.getpalette()[:768]) == voc.palette_bytes()
    np.testing.assert_array_equal(read_label(path), label)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.png"]  # no temporary left behind
