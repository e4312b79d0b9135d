import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from seglab.config import DataConfig
from seglab.data import build_dataset
from seglab.data.datasets import COCOInstances, check_coco, coco_layout, generate_demo_data
from seglab.data.instance_transforms import build_instance_transforms, collate_instances
from seglab.data.palettes import DEMO_SHAPES_CLASSES
from seglab.errors import ConfigError, DatasetError

H, W = 30, 40


def uncompressed_rle(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a run of zeros (the COCO convention), written out by hand."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return counts


def drawn_masks() -> dict[str, np.ndarray]:
    polygon = np.zeros((H, W), np.uint8)
    polygon[4:12, 4:14] = 1  # the rectangle polygon (4,4)-(14,12) covers pixels 4..11 x 4..13
    raw = np.zeros((H, W), np.uint8)
    raw[15:25, 20:30] = 1
    raw[15:18, 20:23] = 0  # a notch, so the mask is not its box
    compressed = np.zeros((H, W), np.uint8)
    for r in range(2, 12):
        compressed[r, 25 : 25 + (r - 1)] = 1  # a staircase triangle
    crowd = np.zeros((H, W), np.uint8)
    crowd[20:28, 2:12] = 1
    return {"polygon": polygon, "raw": raw, "compressed": compressed, "crowd": crowd}


def bbox_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def make_coco(root, *, split="val2017") -> tuple:
    """An official-layout COCO fixture: image 1 with a polygon, an uncompressed RLE, a compressed RLE and a
    crowd region; image 2 without annotations. Category ids 5, 2, 9 (not contiguous, not sorted)."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / split / "a.png")
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / split / "b.png")
    m = drawn_masks()
    rle = mask_utils.encode(np.asfortranarray(m["compressed"]))
    anns = [
        {"id": 11, "image_id": 1, "category_id": 5, "segmentation": [[4, 4, 14, 4, 14, 12, 4, 12]],
         "bbox": bbox_of(m["polygon"]), "area": 80.0, "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 2,
         "segmentation": {"size": [H, W], "counts": uncompressed_rle(m["raw"])},
         "bbox": bbox_of(m["raw"]), "area": float(m["raw"].sum()), "iscrowd": 0},
        {"id": 13, "image_id": 1, "category_id": 9,
         "segmentation": {"size": [H, W], "counts": rle["counts"].decode("ascii")},
         "bbox": bbox_of(m["compressed"]), "area": float(m["compressed"].sum()), "iscrowd": 0},
        {"id": 14, "image_id": 1, "category_id": 2,
         "segmentation": {"size": [H, W], "counts": uncompressed_rle(m["crowd"])},
         "bbox": bbox_of(m["crowd"]), "area": float(m["crowd"].sum()), "iscrowd": 1},
    ]  # fmt: skip
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                   {"id": 2, "file_name": "b.png", "width": 20, "height": 16}],
        "annotations": anns,
        "categories": [{"id": 5, "name": "five"}, {"id": 2, "name": "two"}, {"id": 9, "name": "nine"}],
    }  # fmt: skip
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, root / split, data, pixels


def rewrite(ann_file, data, edit) -> None:
    data = json.loads(json.dumps(data))
    edit(data)
    ann_file.write_text(json.dumps(data))


def test_every_segmentation_format_decodes_pixel_exactly(tmp_path):
    ann_file, image_dir, _, pixels = make_coco(tmp_path)
    ds = COCOInstances(ann_file, image_dir)
    assert len(ds) == 2 and ds.image_ids == [1, 2] and ds.skipped == {}
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert torch.allclose(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, atol=1e-7, rtol=0)
    m = drawn_masks()
    expected = np.stack([m["polygon"], m["raw"], m["compressed"]])
    assert target["masks"].dtype == torch.uint8 and np.array_equal(target["masks"].numpy(), expected)
    boxes = [[4, 4, 14, 12], [20, 15, 30, 25], [25, 2, 35, 12]]  # x1, y1, x2 (exclusive), y2 by hand
    assert target["boxes"].format.value == "XYXY" and target["boxes"].tolist() == boxes
    assert target["area"].tolist() == [80.0, 91.0, 55.0]
    assert int(target["image_id"]) == 1 and target["image_id"].dtype == torch.int64


def test_labels_are_contiguous_and_map_back_to_category_ids(tmp_path):
    ann_file, image_dir, _, _ = make_coco(tmp_path)
    ds = COCOInstances(ann_file, image_dir)
    assert ds.cat_ids == [2, 5, 9] and ds.classes == ["background", "two", "five", "nine"]
    assert ds.cat_id_to_label == {2: 1, 5: 2, 9: 3} and ds.label_to_cat_id == {1: 2, 2: 5, 3: 9}
    _, target = ds[0]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 1, 3]
    assert [ds.label_to_cat_id[x] for x in target["labels"].tolist()] == [5, 2, 9]


def test_crowd_regions_stay_in_the_ground_truth_but_not_in_targets(tmp_path):
    ann_file, image_dir, _, _ = make_coco(tmp_path)
    ds = COCOInstances(ann_file, image_dir)
    _, target = ds[0]
    assert target["iscrowd"].tolist() == [0, 0, 0]
    assert sorted(ds.coco.getAnnIds(imgIds=[1])) == [11, 12, 13, 14]
    _, with_crowd = COCOInstances(ann_file, image_dir, skip_crowd_in_targets=False)[0]
    assert with_crowd["iscrowd"].tolist() == [0, 0, 0, 1]
    assert np.array_equal(with_crowd["masks"][3].numpy(), drawn_masks()["crowd"])


def test_an_image_without_annotations_is_an_empty_sample(tmp_path):
    ann_file, image_dir, _, _ = make_coco(tmp_path)
    image, target = COCOInstances(ann_file, image_dir)[1]
    assert image.shape == (3, 16, 20)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 16, 20) and target["area"].shape == (0,)


def test_missing_files_raise_naming_them(tmp_path):
    ann_file, image_dir, _, _ = make_coco(tmp_path)
    with pytest.raises(DatasetError, match="nope.json: annotation file not found"):
        COCOInstances(tmp_path / "nope.json", image_dir)
    with pytest.raises(DatasetError, match="missing_dir: image folder not found"):
        COCOInstances(ann_file, tmp_path / "missing_dir")
    (image_dir / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"b\.png: image 2 listed in .*instances_val2017\.json not found"):
        COCOInstances(ann_file, image_dir)


def test_unparseable_json_and_missing_sections_raise(tmp_path):
    ann_file, image_dir, data, _ = make_coco(tmp_path)
    ann_file.write_text("{not json")
    with pytest.raises(DatasetError, match="instances_val2017.json: not a readable JSON file"):
        COCOInstances(ann_file, image_dir)
    for key in ("images", "annotations", "categories"):
        rewrite(ann_file, data, lambda d, key=key: d.pop(key))
        with pytest.raises(DatasetError, match=f"instances_val2017.json: field '{key}' missing"):
            COCOInstances(ann_file, image_dir)


@pytest.mark.parametrize(
    ("segmentation", "detail"),
    [
        ([[4, 4, 14, 4, 14]], "odd number of coordinates"),
        ([[4, 4, 14, 4]], "2 points; expected at least 3"),
        ([[4, 4, "x", 4, 14, 12]], "not a list of numbers"),
        ({"size": [H, W], "counts": [1, 2, 3]}, "summing to 1200"),
        ({"size": [H + 1, W], "counts": "abc"}, "differs from the image size"),
    ],
)
def test_malformed_segmentations_raise_naming_annotation_and_field(tmp_path, segmentation, detail):
    ann_file, image_dir, data, _ = make_coco(tmp_path)
    rewrite(ann_file, data, lambda d: d["annotations"][0].update(segmentation=segmentation))
    where = r"instances_val2017\.json: annotation 11: field 'segmentation': "
    with pytest.raises(DatasetError, match=where + f".*{detail}"):
        COCOInstances(ann_file, image_dir)


def test_unknown_category_raises(tmp_path):
    ann_file, image_dir, data, _ = make_coco(tmp_path)
    rewrite(ann_file, data, lambda d: d["annotations"][1].update(category_id=3))
    with pytest.raises(DatasetError, match=r"instances_val2017\.json: annotation 12: field 'category_id' 3 is not"):
        COCOInstances(ann_file, image_dir)


@pytest.mark.parametrize(("field", "value"), [("area", None), ("area", -1.0), ("iscrowd", 2)])
def test_bad_area_or_iscrowd_raises_naming_the_field(tmp_path, field, value):
    """Found by the long fuzz run: an 'area' of null crashed item loading with a TypeError."""
    ann_file, image_dir, data, _ = make_coco(tmp_path)
    rewrite(ann_file, data, lambda d: d["annotations"][0].update({field: value}))
    with pytest.raises(DatasetError, match=rf"instances_val2017\.json: annotation 11: field '{field}'"):
        COCOInstances(ann_file, image_dir)


def test_degenerate_annotations_are_skipped_and_counted(tmp_path):
    ann_file, image_dir, data, _ = make_coco(tmp_path)

    def edit(d):
        d["annotations"][0]["bbox"][2] = 0  # zero width
        d["annotations"][1]["segmentation"] = []  # empty polygon list
        d["annotations"][2]["segmentation"] = [[5, 5, 5, 5, 5, 5]]  # a polygon that covers no pixel

    rewrite(ann_file, data, edit)
    ds = COCOInstances(ann_file, image_dir)
    assert ds.skipped == {"degenerate_box": 1, "empty_segmentation": 1, "empty_mask": 1}
    _, target = ds[0]
    assert target["labels"].shape == (0,) and target["masks"].shape == (0, H, W)


def test_image_size_differing_from_the_json_raises_naming_the_file(tmp_path):
    ann_file, image_dir, data, _ = make_coco(tmp_path)
    rewrite(ann_file, data, lambda d: d["images"][1].update(width=21))
    ds = COCOInstances(ann_file, image_dir)
    with pytest.raises(DatasetError, match=r"b\.png: image 2 in .*: image is 20x16 .* says 21x16"):
        ds[1]


def test_check_coco_reports_every_problem_without_raising(tmp_path):
    ann_file, image_dir, data, _ = make_coco(tmp_path)

    def edit(d):
        d["images"][1]["width"] = 21
        d["annotations"][0]["bbox"][3] = -1
        d["annotations"][1]["category_id"] = 77
        d["annotations"][2]["segmentation"] = [[1, 2, 3]]

    rewrite(ann_file, data, edit)
    problems = check_coco(ann_file, image_dir)
    kinds = sorted((kind, is_error) for kind, _, _, is_error in problems)
    assert kinds == [("bad_segmentation", True), ("degenerate_box", False), ("size_mismatch", True),
                     ("unknown_category", True)]  # fmt: skip
    where = {kind: w for kind, w, _, _ in problems}
    assert where["unknown_category"].endswith("instances_val2017.json: annotation 12")
    assert where["size_mismatch"].endswith("b.png")
    assert check_coco(tmp_path / "x.json", image_dir)[0][0] == "bad_file"


def test_coco_layout_official_demo_and_neither(tmp_path):
    ann_file, image_dir, _, _ = make_coco(tmp_path / "coco")
    assert coco_layout(tmp_path / "coco", "val2017") == (ann_file, image_dir)
    demo = tmp_path / "demo"
    (demo / "annotations").mkdir(parents=True)
    (demo / "JPEGImages").mkdir()
    (demo / "annotations" / "instances_val.json").write_text("{}")
    assert coco_layout(demo, "val") == (demo / "annotations" / "instances_val.json", demo / "JPEGImages")
    with pytest.raises(DatasetError, match=r"instances_train\.json: annotation file not found; expected"):
        coco_layout(demo, "train")
    (demo / "JPEGImages").rmdir()
    with pytest.raises(DatasetError, match="neither .* is a folder"):
        coco_layout(demo, "val")


def mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_the_flip_keeps_boxes_on_their_masks(tmp_path):
    ann_file, image_dir, _, _ = make_coco(tmp_path)
    cfg = DataConfig(hflip=True, scale_range=[1.0, 1.0])
    ds = COCOInstances(ann_file, image_dir, build_instance_transforms(cfg, train=True))
    plain = COCOInstances(ann_file, image_dir)[0][1]
    flipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        image, target = ds[0]
        assert image.dtype == torch.float32
        is_flipped = not torch.equal(target["masks"], plain["masks"])
        flipped += is_flipped
        if is_flipped:
            assert torch.equal(target["masks"], plain["masks"].flip(-1))
        for box, mask in zip(target["boxes"].tolist(), target["masks"], strict=True):
            assert box == mask_box(mask)
    assert 0 < flipped < 8


def test_scale_jitter_keeps_boxes_masks_and_labels_aligned(tmp_path):
    ann_file, image_dir, _, _ = make_coco(tmp_path)
    cfg = DataConfig(hflip=True, scale_range=[0.5, 2.0], color_jitter=0.2)
    ds = COCOInstances(ann_file, image_dir, build_instance_transforms(cfg, train=True))
    counts = set()
    for seed in range(10):
        torch.manual_seed(seed)
        image, target = ds[0]
        n = len(target["boxes"])
        counts.add(n)
        assert image.shape == (3, H, W) and target["masks"].shape == (n, H, W)
        assert target["labels"].shape == target["area"].shape == target["iscrowd"].shape == (n,)
        for box, mask in zip(target["boxes"].tolist(), target["masks"], strict=True):
            assert mask.any() and np.allclose(box, mask_box(mask), atol=1.5)
    assert max(counts) == 3 and min(counts) < 3  # a 2x zoom crops some objects away


def test_eval_transforms_only_convert(tmp_path):
    ann_file, image_dir, _, pixels = make_coco(tmp_path)
    ds = COCOInstances(ann_file, image_dir, build_instance_transforms(DataConfig(), train=False))
    (image, target), (image2, _) = ds[0], ds[1]
    assert torch.allclose(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, atol=1e-7, rtol=0)
    assert target["boxes"].tolist() == [[4, 4, 14, 12], [20, 15, 30, 25], [25, 2, 35, 12]]
    images, targets = collate_instances([(image, target), (image2, {})])
    assert [i.shape for i in images] == [(3, H, W), (3, 16, 20)] and targets[0] is target


def test_demo_instances_load_through_build_dataset(tmp_path):
    root = generate_demo_data(tmp_path / "demo", seed=0, num_train=2, num_val=3, size=64)
    cfg = DataConfig(dataset="demo", root=str(root))
    ds = build_dataset(cfg, "val", train=False, task="instance")
    assert isinstance(ds, COCOInstances) and len(ds) == 3 and tuple(ds.classes) == DEMO_SHAPES_CLASSES
    for i in range(3):
        _, target = ds[i]
        stem = ds.coco.imgs[ds.image_ids[i]]["file_name"][:-4]
        inst = np.array(Image.open(root / "SegmentationObject" / f"{stem}.png"))
        cls = np.array(Image.open(root / "SegmentationClass" / f"{stem}.png"))
        known = inst != 255
        assert len(target["masks"]) == len(set(np.unique(inst[known]).tolist()) - {0})
        for k, (mask, label) in enumerate(zip(target["masks"].numpy().astype(bool), target["labels"], strict=True)):
            assert np.array_equal(mask[known], inst[known] == k + 1)
            assert set(np.unique(cls[mask & known]).tolist()) == {int(label)}
    train = build_dataset(cfg, "train", train=True, task="instance")
    assert len(train) == 2 and train[0][0].dtype == torch.float32


def test_build_dataset_task_errors(tmp_path):
    make_coco(tmp_path)
    with pytest.raises(ConfigError, match="'coco' holds instance annotations"):
        build_dataset(DataConfig(dataset="coco", root=str(tmp_path)), "val2017", train=False)
    with pytest.raises(ConfigError, match="'voc' has no instance annotations"):
        build_dataset(DataConfig(dataset="voc", root=str(tmp_path)), "val2017", train=False, task="instance")
    with pytest.raises(ConfigError, match="data.root"):
        build_dataset(DataConfig(dataset="coco"), "val2017", train=False, task="instance")
    ds = build_dataset(DataConfig(dataset="coco", root=str(tmp_path)), "val2017", train=False, task="instance")
    assert ds.image_dir == tmp_path / "val2017" and len(ds) == 2
