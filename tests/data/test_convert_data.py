"""seglab convert-data: each annotation tool's export, written here in the tool's documented format from a label
map the test knows, converts back to exactly that map: classes, overlaps (smaller objects on top) and a ring whose
hole stays a hole. Shapes are axis-aligned on integer coordinates, which pycocotools rasterises exactly, so
polygon formats are compared exactly too."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from seglab.cli import build_parser, main
from seglab.data.annotations import FORMATS, convert
from seglab.data.annotations.common import polygons_rle
from seglab.data.annotations.label_studio import decode_brush_rle
from seglab.data.io import read_label
from seglab.errors import ConfigError, DatasetError

H, W = 40, 48
CLASSES = ("cat", "dog", "tree")  # indices 1, 2, 3


def rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


# The scene: a cat ring (outer 2..30 x 2..26 with a hole 10..22 x 8..18), a dog overlapping the ring and part of
# its hole, a small tree on the ring, an L-shaped tree apart. Areas: ring 552 > dog 400 > L 64 > small tree 16.
RING_OUTER, RING_HOLE = rect(2, 2, 30, 26), rect(10, 8, 22, 18)
DOG = rect(20, 14, 40, 34)
TREE_SMALL = rect(24, 4, 28, 8)
TREE_L = [36, 2, 46, 2, 46, 6, 40, 6, 40, 12, 36, 12]
CROWD = rect(0, 36, 10, 40)  # a crowd region, bottom left
# The ring as one polygon walking out to the hole and back (how Ultralytics' converter writes a hole into one line).
RING_BRIDGED = RING_OUTER + RING_OUTER[:2] + RING_HOLE + RING_HOLE[:2]


def masks():
    """Each object's pixels, drawn with numpy (independently of any polygon code)."""
    ring = np.zeros((H, W), bool)
    ring[2:26, 2:30] = True
    ring[8:18, 10:22] = False
    dog, small, tree_l, crowd = (np.zeros((H, W), bool) for _ in range(4))
    dog[14:34, 20:40] = True
    small[4:8, 24:28] = True
    tree_l[2:6, 36:46] = True
    tree_l[6:12, 36:40] = True
    crowd[36:40, 0:10] = True
    return {"ring": ring, "dog": dog, "small": small, "tree_l": tree_l, "crowd": crowd}


def scene(crowd=None):
    m = masks()
    label = np.zeros((H, W), np.uint8)
    for name, index in (("ring", 1), ("dog", 2), ("tree_l", 3), ("small", 3)):  # largest first
        label[m[name]] = index
    if crowd is not None:
        label[m["crowd"]] = crowd
    return label


def hole_is_empty(label):
    return (label[8:18, 10:20] == 0).all()  # the ring's hole, less the strip x 20..22 the dog covers


def polygons_mask(polygons, height, width):
    return mask_utils.decode(polygons_rle(polygons, height, width)).astype(bool)


def write_image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def check(dst, expected, classes_txt):
    """The converted folder holds each image's bytes, its expected mask, and classes.txt."""
    for stem, (image, label) in expected.items():
        copied = dst / "images" / f"{stem}{image.suffix}"
        assert copied.read_bytes() == image.read_bytes()
        mask = read_label(dst / "masks" / f"{stem}.png")
        np.testing.assert_array_equal(mask, label, err_msg=stem)
    assert sorted(p.stem for p in (dst / "masks").iterdir()) == sorted(expected)
    assert (dst / "classes.txt").read_text(encoding="utf-8") == classes_txt


def rle_uncompressed(mask):
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.ravel(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


def rle_compressed(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


# -- fill rule ---------------------------------------------------------------------------------------------------


def test_nested_polygons_cut_holes_and_overlapping_ones_unite():
    outer, hole, island = rect(0, 0, 20, 20), rect(4, 4, 16, 16), rect(8, 8, 12, 12)
    got = polygons_mask([outer, hole, island], 24, 24)
    want = np.zeros((24, 24), bool)
    want[0:20, 0:20] = True
    want[4:16, 4:16] = False
    want[8:12, 8:12] = True  # an island in the hole
    np.testing.assert_array_equal(got, want)
    # two parts that overlap by a slip are united (pycocotools' annToMask), not cut (even-odd would cut)
    got = polygons_mask([rect(0, 0, 10, 10), rect(8, 0, 20, 10)], 24, 24)
    assert got[0:10, 0:20].all() and got.sum() == 200
    # one polygon that walks out to its hole and back is a ring, whichever way the hole turns
    bridged_back = RING_OUTER + RING_OUTER[:2] + [10, 8, 10, 18, 22, 18, 22, 8, 10, 8]
    for polygon in (RING_BRIDGED, bridged_back):
        np.testing.assert_array_equal(polygons_mask([polygon], H, W), masks()["ring"])


# -- COCO -------------------------------------------------------------------------------------------------------


def coco_file(path, annotations, categories=None, images=None):
    categories = categories or [{"id": 12, "name": "tree"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    images = images or [{"id": 1, "file_name": "scene.png", "width": W, "height": H},
                        {"id": 2, "file_name": "empty.png", "width": W, "height": H}]
    for k, ann in enumerate(annotations, 1):
        ann.setdefault("id", k)
        ann.setdefault("image_id", 1)
        ann.setdefault("iscrowd", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_coco_polygons_ring_overlaps_and_crowd(tmp_path):
    src = tmp_path / "coco"
    images = {"scene": write_image(src / "images" / "scene.png"), "empty": write_image(src / "images" / "empty.png", 1)}
    annotations = [  # file order is not paint order: the small tree comes first
        {"category_id": 12, "segmentation": [TREE_SMALL]},
        {"category_id": 3, "segmentation": [RING_OUTER, RING_HOLE]},  # a multi-polygon ring
        {"category_id": 7, "segmentation": [DOG]},
        {"category_id": 12, "segmentation": [TREE_L]},
        {"category_id": 3, "segmentation": rle_compressed(masks()["crowd"]), "iscrowd": 1},
    ]
    coco_file(src / "annotations.json", annotations)
    result = convert("coco", src / "annotations.json", tmp_path / "out")
    assert (result.images, result.objects, result.classes) == (2, 5, 4)
    expected = {"scene": (images["scene"], scene(crowd=255)), "empty": (images["empty"], np.zeros((H, W), np.uint8))}
    check(tmp_path / "out", expected, "background\ncat\ndog\ntree\n")  # categories by ascending id 3, 7, 12
    assert hole_is_empty(read_label(tmp_path / "out" / "masks" / "scene.png"))

    # crowd="class" paints the crowd region as its category
    convert("coco", src / "annotations.json", tmp_path / "out2", crowd="class")
    np.testing.assert_array_equal(read_label(tmp_path / "out2" / "masks" / "scene.png"), scene(crowd=1))


def test_coco_rle_compressed_and_uncompressed(tmp_path):
    src = tmp_path / "coco"
    image = write_image(src / "scene.png")
    m = masks()
    annotations = [
        {"category_id": 3, "segmentation": rle_compressed(m["ring"])},
        {"category_id": 7, "segmentation": rle_uncompressed(m["dog"])},
        {"category_id": 12, "segmentation": rle_uncompressed(m["small"])},
        {"category_id": 12, "segmentation": rle_compressed(m["tree_l"])},
    ]
    coco_file(src / "instances.json", annotations, images=[{"id": 1, "file_name": "scene.png", "width": W,
                                                             "height": H}])
    convert("coco", src / "instances.json", tmp_path / "out")
    check(tmp_path / "out", {"scene": (image, scene())}, "background\ncat\ndog\ntree\n")


def test_the_folder_loader_reads_the_output(tmp_path):
    from seglab.data.datasets import FolderSegmentation

    src = tmp_path / "coco"
    write_image(src / "scene.png")
    coco_file(src / "instances.json", [{"category_id": 7, "segmentation": [DOG]}],
              images=[{"id": 1, "file_name": "scene.png", "width": W, "height": H}])
    convert("coco", src / "instances.json", tmp_path / "out")
    dataset = FolderSegmentation(tmp_path / "out")
    image, label = dataset[0]
    assert dataset.ids == ["scene"] and image.size == (W, H)
    np.testing.assert_array_equal(label, np.where(masks()["dog"], 2, 0))


# -- YOLO -------------------------------------------------------------------------------------------------------


def yolo_line(cls, polygon):
    coords = [v / (W if k % 2 == 0 else H) for k, v in enumerate(polygon)]
    return " ".join([str(cls)] + [f"{v:.6f}" for v in coords])


def test_yolo_seg_round_trip_with_splits(tmp_path):
    src = tmp_path / "yolo"
    scene_image = write_image(src / "images" / "train" / "scene.png")
    empty_image = write_image(src / "images" / "val" / "empty.png", 1)  # no label file: a background image
    (src / "labels" / "train").mkdir(parents=True)
    lines = [yolo_line(2, TREE_SMALL), yolo_line(0, RING_BRIDGED), yolo_line(1, DOG), "", yolo_line(2, TREE_L)]
    (src / "labels" / "train" / "scene.txt").write_text("\n".join(lines) + "\n")
    (src / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\n"
                                   "names:\n  0: cat\n  1: dog\n  2: tree\n")  # names as a dict
    result = convert("yolo", src, tmp_path / "out")
    assert (result.images, result.objects) == (2, 4)
    expected = {"scene": (scene_image, scene()), "empty": (empty_image, np.zeros((H, W), np.uint8))}
    check(tmp_path / "out", expected, "background\ncat\ndog\ntree\n")
    assert (tmp_path / "out" / "train.txt").read_text() == "scene\n"
    assert (tmp_path / "out" / "val.txt").read_text() == "empty\n"


def test_yolo_names_from_classes_txt_and_split_folders(tmp_path):
    src = tmp_path / "yolo"  # Roboflow's layout: <split>/images, <split>/labels
    image = write_image(src / "train" / "images" / "scene.png")
    (src / "train" / "labels").mkdir(parents=True)
    (src / "train" / "labels" / "scene.txt").write_text(yolo_line(1, DOG) + "\n")
    (src / "classes.txt").write_text("cat\ndog\n")
    convert("yolo", src, tmp_path / "out")
    dog = np.where(masks()["dog"], 2, 0).astype(np.uint8)
    check(tmp_path / "out", {"scene": (image, dog)}, "background\ncat\ndog\n")


@pytest.mark.parametrize("line, message", [
    ("1 0.5 0.5 0.2 0.2", r"scene\.txt:2: 4 numbers after the class \(a detection box 'class cx cy w h'"),
    ("1 0.1 0.1", r"scene\.txt:2: polygon has 1 point\(s\); expected at least 3"),
    ("5 0.1 0.1 0.5 0.1 0.5 0.5", r"scene\.txt:2: class '5' is not a class id 0\.\.1"),
    ("1 0.1 0.1 0.5 zero 0.5 0.5", r"scene\.txt:2: .* is not numbers"),
    ("1 0.1 0.1 1.5 0.1 0.5 0.5", r"scene\.txt:2: coordinates outside 0\.\.1"),
])
def test_yolo_bad_lines_name_file_and_line(tmp_path, line, message):
    src = tmp_path / "yolo"
    write_image(src / "images" / "scene.png")
    (src / "labels").mkdir()
    (src / "labels" / "scene.txt").write_text(yolo_line(0, DOG) + "\n" + line + "\n")
    (src / "data.yaml").write_text("names: [cat, dog]\n")
    with pytest.raises(DatasetError, match=message):
        convert("yolo", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # label files are parsed before anything is written


def test_yolo_label_without_image_is_an_error(tmp_path):
    src = tmp_path / "yolo"
    write_image(src / "images" / "scene.png")
    (src / "labels").mkdir()
    (src / "labels" / "lost.txt").write_text(yolo_line(0, DOG) + "\n")
    (src / "data.yaml").write_text("names: [cat]\n")
    with pytest.raises(DatasetError, match=r"lost\.txt: label file without an image"):
        convert("yolo", src, tmp_path / "out")


# -- Label Studio ---------------------------------------------------------------------------------------------


def ls_rle_encode(values):
    """Label Studio's brush RLE, from @thi.ng/rle-pack's format: a 32-bit count, a 5-bit word size - 1, four 4-bit
    run-length widths - 1; then chunks: a repeat bit, a 2-bit width choice, the length - 1 in that width, and one
    word (repeat) or length words (literal). Runs of one value here go into literal chunks of several values."""
    widths = [3, 4, 8, 16]
    out = [f"{len(values):032b}", f"{8 - 1:05b}", "".join(f"{w - 1:04b}" for w in widths)]

    def chunk(repeat, words):
        n = len(words) if not repeat else repeat
        choice = next(k for k, w in enumerate(widths) if n - 1 < 2**w)
        body = f"{words[0]:08b}" if repeat else "".join(f"{v:08b}" for v in words)
        out.append(f"{int(bool(repeat))}{choice:02b}{n - 1:0{widths[choice]}b}" + body)

    literal = []
    values = [int(v) for v in values]
    k = 0
    while k < len(values):
        end = k
        while end < len(values) and values[end] == values[k]:
            end += 1
        if end - k == 1:
            literal.append(values[k])
            if len(literal) == 2**16:
                chunk(0, literal)
                literal = []
        else:
            if literal:
                chunk(0, literal)
                literal = []
            for start in range(k, end, 2**16):
                chunk(min(2**16, end - start), [values[k]])
        k = end
    if literal:
        chunk(0, literal)
    bits = "".join(out)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def ls_brush(mask):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[mask] = (255, 0, 0, 255)
    return ls_rle_encode(rgba.ravel())


def test_label_studio_rle_decoder_reads_literal_and_repeat_chunks():
    values = np.array([0] * 70000 + [1, 2, 3, 200] + [7] * 9 + [5], np.uint8)  # a run longer than 2**16 too
    np.testing.assert_array_equal(decode_brush_rle(ls_rle_encode(values), expected=len(values)), values)
    with pytest.raises(DatasetError, match="ends early"):
        decode_brush_rle(ls_rle_encode(values)[:-3])
    with pytest.raises(DatasetError, match="holds 70014 values; expected width x height x 4 = 16"):
        decode_brush_rle(ls_rle_encode(values), expected=16)


def ls_region(kind, label, data):
    if kind == "brush":
        value = {"format": "rle", "rle": data, "brushlabels": [label]}
    else:
        points = [[100 * data[k] / W, 100 * data[k + 1] / H] for k in range(0, len(data), 2)]
        value = {"points": points, "closed": True, "polygonlabels": [label]}
    return {"id": label[:3], "type": f"{kind}labels" if kind == "brush" else "polygonlabels", "value": value,
            "original_width": W, "original_height": H, "image_rotation": 0, "from_name": "tag", "to_name": "image"}


def test_label_studio_brush_and_polygons(tmp_path):
    src = tmp_path / "ls"
    brush_image = write_image(src / "media" / "brush.png")  # uploaded as 1a2b3c4d-brush.png
    poly_image = write_image(src / "media" / "photos" / "poly.png", 1)
    m = masks()
    brush = [ls_region("brush", "tree", ls_brush(m["small"])), ls_region("brush", "cat", ls_brush(m["ring"])),
             ls_region("brush", "dog", ls_brush(m["dog"])), ls_region("brush", "tree", ls_brush(m["tree_l"]))]
    polygons = [ls_region("polygon", "cat", RING_BRIDGED), ls_region("polygon", "dog", DOG),
                ls_region("polygon", "tree", TREE_SMALL), ls_region("polygon", "tree", TREE_L),
                {"type": "choices", "value": {"choices": ["outdoor"]}, "from_name": "scene", "to_name": "image"}]
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/1/1a2b3c4d-brush.png"},
         "annotations": [{"id": 10, "result": brush, "was_cancelled": False}]},
        {"id": 2, "data": {"image": "/data/local-files/?d=photos/poly.png"},
         "annotations": [{"id": 11, "result": [], "was_cancelled": True}, {"id": 12, "result": polygons}]},
        {"id": 3, "data": {"image": "/data/upload/1/unlabelled.png"}, "annotations": []},
    ]
    (src / "export.json").write_text(json.dumps(tasks))
    (src / "config.xml").write_text(
        '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        '<Label value="cat" background="#FF0000"/><Label value="dog" background="#0f0"/>'
        '<Label value="tree" background="rgba(0,0,255,0.7)"/></BrushLabels>'
        '<PolygonLabels name="poly" toName="image"><Label value="cat"/></PolygonLabels></View>')
    result = convert("label-studio", src / "export.json", tmp_path / "out", images=src / "media",
                     classes=src / "config.xml")
    assert (result.images, result.objects, len(result.skipped)) == (2, 8, 1)
    assert "task 3" in result.skipped[0]
    expected = {"brush": (brush_image, scene()), "poly": (poly_image, scene())}
    check(tmp_path / "out", expected, "background\ncat #ff0000\ndog #00ff00\ntree\n")


def test_label_studio_errors_name_the_task(tmp_path):
    src = tmp_path / "ls"
    write_image(src / "scene.png")
    task = {"id": 7, "data": {"image": "/data/upload/1/scene.png"},
            "annotations": [{"result": [ls_region("polygon", "dog", DOG)]}, {"result": []}]}
    (src / "export.json").write_text(json.dumps([task]))
    with pytest.raises(DatasetError, match=r"export\.json: task 7: 2 annotations; expected one"):
        convert("label-studio", src / "export.json", tmp_path / "out")
    task["annotations"] = [{"result": [ls_region("polygon", "dog", DOG)]}]
    task["data"]["image"] = "/data/upload/1/missing.png"
    (src / "export.json").write_text(json.dumps([task]))
    with pytest.raises(DatasetError, match=r"task 7: image '/data/upload/1/missing\.png' not found"):
        convert("label-studio", src / "export.json", tmp_path / "out")


# -- CVAT -------------------------------------------------------------------------------------------------------

CVAT_COLORS = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0)}


def test_cvat_segmentation_mask_round_trip(tmp_path):
    src = tmp_path / "cvat"
    (src / "SegmentationClass").mkdir(parents=True)
    (src / "ImageSets" / "Segmentation").mkdir(parents=True)
    (src / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:128,0,0::\n"
                                      "dog:0,128,0::\ntree:128,128,0::\n")
    (src / "ImageSets" / "Segmentation" / "default.txt").write_text("scene\ngray\n")
    label = scene()
    colours = np.zeros((H, W, 3), np.uint8)
    for index, colour in CVAT_COLORS.items():
        colours[label == index] = colour
    Image.fromarray(colours).save(src / "SegmentationClass" / "scene.png")  # 3-channel: colours
    Image.fromarray(label).save(src / "SegmentationClass" / "gray.png")  # 1-channel: labelmap line indices
    scene_image = write_image(src / "JPEGImages" / "scene.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(src / "JPEGImages" / "gray.jpg")
    result = convert("cvat-mask", src, tmp_path / "out")
    assert (result.images, result.objects) == (2, 6)  # 3 classes present in each
    expected = {"scene": (scene_image, label), "gray": (src / "JPEGImages" / "gray.jpg", label)}
    check(tmp_path / "out", expected, "background #000000\ncat #800000\ndog #008000\ntree #808000\n")
    assert hole_is_empty(read_label(tmp_path / "out" / "masks" / "scene.png"))


def test_cvat_coco_round_trip(tmp_path):
    src = tmp_path / "cvat_coco"
    scene_image = write_image(src / "images" / "default" / "scene.png")
    holes_image = write_image(src / "images" / "default" / "holes.png", 1)
    m = masks()
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "tree"},
                  {"id": 4, "name": "background"}]
    annotations = [
        {"category_id": 1, "segmentation": rle_uncompressed(m["ring"]), "iscrowd": 1},  # a mask, as CVAT writes it
        {"category_id": 2, "segmentation": [DOG]},
        {"category_id": 3, "segmentation": [], "bbox": [24, 4, 4, 4]},  # a box shape
        {"category_id": 3, "segmentation": [TREE_L]},
        # CVAT's documented way to cut a hole: a background shape over the object
        {"category_id": 1, "segmentation": [RING_OUTER], "image_id": 2},
        {"category_id": 4, "segmentation": [RING_HOLE], "image_id": 2},
    ]
    images = [{"id": 1, "file_name": "scene.png", "width": W, "height": H},
              {"id": 2, "file_name": "holes.png", "width": W, "height": H}]
    coco_file(src / "annotations" / "instances_default.json", annotations, categories, images)
    result = convert("cvat-coco", src, tmp_path / "out")
    assert (result.images, result.objects, result.classes) == (2, 6, 4)
    ring_only = np.where(m["ring"], 1, 0).astype(np.uint8)
    check(tmp_path / "out", {"scene": (scene_image, scene()), "holes": (holes_image, ring_only)},
          "background\ncat\ndog\ntree\n")
    assert not (tmp_path / "out" / "default.txt").exists()  # one subset: no split lists


# -- colour PNGs ------------------------------------------------------------------------------------------------

PALETTE = "background #000000\ncat #ff0000\ndog #00ff00\ntree #0000ff\nignore #ffffff\n"
PALETTE_RGB = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 255: (255, 255, 255)}


def test_color_png_round_trip_with_a_palette_file(tmp_path):
    src = tmp_path / "colour"
    image = write_image(src / "images" / "scene.jpg")
    label = scene(crowd=255)
    colours = np.zeros((H, W, 3), np.uint8)
    for index, colour in PALETTE_RGB.items():
        colours[label == index] = colour
    (src / "labels").mkdir()
    Image.fromarray(colours).convert("RGBA").save(src / "labels" / "scene.png")  # alpha is dropped
    (src / "palette.txt").write_text(PALETTE)
    result = convert("color-png", src, tmp_path / "out", palette=src / "palette.txt")
    assert (result.images, result.objects, result.classes) == (1, 3, 4)
    check(tmp_path / "out", {"scene": (image, label)}, "background #000000\ncat #ff0000\ndog #00ff00\ntree #0000ff\n")
    assert hole_is_empty(read_label(tmp_path / "out" / "masks" / "scene.png"))


def test_color_png_with_a_label_set_reads_palette_pngs_through_their_palette(tmp_path):
    from seglab.data.io import write_label_png
    from seglab.data.palettes import get_label_set

    src = tmp_path / "colour"
    image = write_image(src / "images" / "scene.png")
    label = scene(crowd=255)  # 255 is drawn in VOC's void colour
    write_label_png(src / "masks" / "scene.png", label, get_label_set("voc"))
    convert("color-png", src, tmp_path / "out", palette="voc")
    check(tmp_path / "out", {"scene": (image, label)},
          "".join(f"{name} #{r:02x}{g:02x}{b:02x}\n" for name, (r, g, b) in
                  zip(get_label_set("voc").classes, get_label_set("voc").colors, strict=True)))


def test_a_colour_not_in_the_palette_names_file_colour_and_pixel(tmp_path):
    src = tmp_path / "colour"
    write_image(src / "images" / "scene.png")
    colours = np.zeros((H, W, 3), np.uint8)
    colours[7, 5:9] = (0x12, 0x34, 0x56)
    (src / "labels").mkdir()
    Image.fromarray(colours).save(src / "labels" / "scene.png")
    (src / "palette.txt").write_text(PALETTE)
    with pytest.raises(DatasetError, match=r"labels/scene\.png: colour #123456 \(18, 52, 86\) at pixel x=5, y=7 is "
                                           r"not in the palette"):
        convert("color-png", src, tmp_path / "out", palette=src / "palette.txt")
    with pytest.raises(ConfigError, match="needs palette"):
        convert("color-png", src, tmp_path / "out2")


# -- bad input and the output folder ------------------------------------------------------------------------------


def test_coco_errors_name_the_file_and_what_was_expected(tmp_path):
    src = tmp_path / "coco"
    write_image(src / "scene.png")
    one = [{"id": 1, "file_name": "scene.png", "width": W, "height": H}]
    cases = [
        ([{"category_id": 3, "segmentation": [DOG]}], [{"id": 1, "file_name": "gone.png", "width": W, "height": H}],
         r"image id 1: image file 'gone\.png' not found"),
        ([{"category_id": 99, "segmentation": [DOG]}], one, r"annotation id 1: category_id 99 is not in 'categories'"),
        ([{"category_id": 3, "segmentation": [[1, 2, 3, 4]]}], one, r"annotation id 1, polygon 0: polygon has 2 point"),
        ([{"category_id": 3, "segmentation": [DOG]}], [{"id": 1, "file_name": "scene.png", "width": 50, "height": H}],
         r"annotation is for a 50x40 image but .*scene\.png is 48x40"),
        ([{"category_id": 3, "segmentation": {"size": [H, W], "counts": [5, 3]}}], one,
         r"RLE run lengths add up to 8 pixels"),
        ([{"category_id": 3, "segmentation": [], "bbox": [1, 1, 4, 4]}], one, r"empty segmentation \(a box only\)"),
    ]
    for k, (annotations, images, message) in enumerate(cases):
        path = coco_file(src / f"case{k}.json", annotations, images=images)
        with pytest.raises(DatasetError, match=message):
            convert("coco", path, tmp_path / f"out{k}", images=src)


def test_output_folder_rules(tmp_path):
    src = tmp_path / "coco"
    write_image(src / "scene.png")
    path = coco_file(src / "instances.json", [{"category_id": 7, "segmentation": [DOG]}],
                     images=[{"id": 1, "file_name": "scene.png", "width": W, "height": H}])
    dst = tmp_path / "out"
    (dst / "masks").mkdir(parents=True)
    (dst / "masks" / "stale.png").write_bytes(b"old")
    with pytest.raises(DatasetError, match="output folder is not empty"):
        convert("coco", path, dst)
    convert("coco", path, dst, overwrite=True)
    assert sorted(p.name for p in (dst / "masks").iterdir()) == ["scene.png"]
    assert not list(dst.rglob("*.tmp"))
    with pytest.raises(DatasetError, match="must lie outside the source"):
        convert("coco", path, src, overwrite=True)
    with pytest.raises(ConfigError, match="takes no option palette"):
        convert("coco", path, tmp_path / "x", palette="voc")
    with pytest.raises(ConfigError, match="unknown annotation format 'labelme'"):
        convert("labelme", path, tmp_path / "x")


def test_cli_converts_and_reports(tmp_path, capsys):
    src = tmp_path / "yolo"
    write_image(src / "images" / "scene.png")
    (src / "labels").mkdir()
    (src / "labels" / "scene.txt").write_text(yolo_line(0, RING_BRIDGED) + "\n")
    (src / "data.yaml").write_text("names: [cat]\n")
    assert main(["convert-data", "yolo", str(src), str(tmp_path / "out")]) == 0
    assert "1 images, 1 objects, 2 classes" in capsys.readouterr().out
    assert hole_is_empty(read_label(tmp_path / "out" / "masks" / "scene.png"))
    assert main(["convert-data", "yolo", str(src), str(tmp_path / "out")]) == 2
    assert "output folder is not empty" in capsys.readouterr().err
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["convert-data"]
    assert next(a for a in sub._actions if a.dest == "format").choices == list(FORMATS)
