import json

import numpy as np
import pytest
from PIL import Image

from seglab.visualize import colorize, overlay, plot_curves, save_overlay

COLORS = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def test_colorize_maps_indices_and_ignore_to_white():
    label = np.array([[0, 1], [2, 255]])
    out = colorize(label, COLORS)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [128, 0, 0]
    assert out[1, 0].tolist() == [0, 128, 0] and out[1, 1].tolist() == [255, 255, 255]
    assert colorize(np.array([[7, -1]]), COLORS).tolist() == [[[255, 255, 255], [255, 255, 255]]]


def test_overlay_blends():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    out = overlay(image, np.array([[1, 1], [0, 255]]), COLORS, alpha=0.5)
    assert out[0, 0].tolist() == [114, 50, 50]  # (100 + 128) / 2, 100 / 2
    assert out[1, 1].tolist() == [178, 178, 178]  # (100 + 255) / 2 rounded to even
    assert np.array_equal(overlay(image, np.zeros((2, 2), int), COLORS, alpha=0.0), image)
    with pytest.raises(ValueError, match="size"):
        overlay(image, np.zeros((3, 2), int), COLORS)


def test_save_overlay_writes_a_png_of_the_image_size(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (13, 17))
    path = save_overlay(tmp_path / "sub" / "a_overlay.png", image, label, COLORS)
    assert path == tmp_path / "sub" / "a_overlay.png"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (17, 13)
        assert np.array_equal(np.asarray(im.convert("RGB")), overlay(image, label, COLORS))
    assert [p.name for p in path.parent.iterdir()] == ["a_overlay.png"]  # no temporary file left


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_curves_writes_a_png(tmp_path):
    records = [{"iter": i, "lr": 0.01 * (1 - i / 100), "loss": 2.0 / i, "loss_out": 2.0 / i} for i in range(5, 101, 5)]
    records.insert(10, {"iter": 50, "split": "val", "mIoU": 0.4, "aAcc": 0.8, "IoU": [0.4, None]})
    records.append({"iter": 100, "split": "val", "mIoU": 0.6, "aAcc": 0.9, "IoU": [0.6, None]})
    _write_jsonl(tmp_path / "metrics.jsonl", records)
    out = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and out.stat().st_size > 1000
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100


def test_plot_curves_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 5, "loss": 1.0, "lr": 0.1}\n\n{"iter": 10, "loss": \n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 3"):
        plot_curves(path, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
    path.write_text('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match="line 1.*iter"):
        plot_curves(path, tmp_path / "curves.png")


def test_legend_has_one_swatch_per_class_in_its_colour(tmp_path):
    from seglab.visualize import legend, save_legend

    colors = [(0, 0, 0), (128, 0, 0), (255, 0, 0)]
    picture = legend(["Background", "Hat", "Hair"], colors, row_height=20)
    assert picture.shape == (64, 220, 3)
    for i, color in enumerate(colors):  # the swatch's centre holds the class colour
        assert tuple(picture[2 + i * 20 + 10, 24]) == color
    path = save_legend(tmp_path / "legend.png", ["a", "b", "c"], colors)
    assert Image.open(path).size == (220, 64)
    with pytest.raises(ValueError, match="2 names but 3"):
        legend(["a", "b"], colors)


def test_person_outlines_and_multi_person_picture():
    from seglab.visualize import draw_multi_person_parsing, instance_colors, person_outlines

    ids = np.zeros((6, 8), dtype=np.int64)
    ids[1:5, 1:4] = 1
    ids[1:5, 4:7] = 2
    outline = person_outlines(ids)
    # person 1's border pixels: its rectangle minus the 2x1 interior
    expected = np.zeros_like(outline)
    expected[1:5, 1:7] = True
    expected[2:4, 2] = False
    expected[2:4, 5] = False
    assert np.array_equal(outline, expected)
    image = np.full((6, 8, 3), 100, dtype=np.uint8)
    parsing = np.where(ids > 0, 5, 0)
    picture = draw_multi_person_parsing(image, parsing, ids, [(0, 0, 0)] * 5 + [(255, 85, 0)])
    colors = instance_colors(3)
    assert tuple(picture[1, 1]) == colors[1] and tuple(picture[1, 6]) == colors[2]
    assert tuple(picture[2, 2]) == (178, 92, 50)  # interior: the overlay of class 5's colour (alpha 0.5)
