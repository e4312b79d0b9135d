"""Synthetic people: the LIP and CIHP layouts, determinism, labels, pose joints and left/right cues."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from seglab.data.datasets import demo_people
from seglab.data.datasets.demo_people import DEMO_PEOPLE_PARAMS, ensure_demo_people, generate_demo_people
from seglab.errors import DatasetError

LIP_FLIP_PAIRS = ((14, 15), (16, 17), (18, 19))
L_SHOULDER, R_SHOULDER, L_ANKLE, R_ANKLE, L_WRIST, R_WRIST, HEAD = 13, 12, 5, 0, 15, 10, 9


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("people") / "demo_people"
    return generate_demo_people(root, seed=0, num_train=6, num_val=4, size=96, num_cihp_train=4, num_cihp_val=3)


@pytest.fixture(scope="module")
def default_val(tmp_path_factory):
    """The default set's LIP val split (per-image generators: identical to the full default generation)."""
    p = dict(DEMO_PEOPLE_PARAMS, num_train=0, num_cihp_train=0, num_cihp_val=1)
    return generate_demo_people(tmp_path_factory.mktemp("people_val") / "d", **p) / "LIP"


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _lip_split(lip, split):
    ids = (lip / "TrainVal_images" / f"{split}_id.txt").read_text().split()
    labels = [
        np.asarray(Image.open(lip / "TrainVal_parsing_annotations" / f"{split}_segmentations" / f"{i}.png"))
        for i in ids
    ]
    with open(lip / "TrainVal_pose_annotations" / f"lip_{split}_set.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    return ids, labels, rows


def _joints(rows):
    return np.array([[float(v) for v in r[1:]] for r in rows]).reshape(-1, 16, 3)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    kw = dict(num_train=2, num_val=1, size=64, num_cihp_train=1, num_cihp_val=1)
    a = _files(generate_demo_people(tmp_path / "a", seed=3, **kw))
    b = _files(generate_demo_people(tmp_path / "b", seed=3, **kw))
    c = _files(generate_demo_people(tmp_path / "c", seed=4, **kw))
    assert a.keys() == b.keys() == c.keys() and a == b
    lip_image = "LIP/TrainVal_images/train_images/train_00001.jpg"
    lip_label = "LIP/TrainVal_parsing_annotations/train_segmentations/train_00001.png"
    cihp_label = "CIHP/instance-level_human_parsing/Validation/Human_ids/val_00000.png"
    for key in (lip_image, lip_label, cihp_label):
        assert a[key] != c[key]


def test_layouts_id_lists_and_manifest(small):
    lip = small / "LIP"
    for split, n in (("train", 6), ("val", 4)):
        ids, labels, rows = _lip_split(lip, split)
        assert ids == [f"{split}_{i:05d}" for i in range(n)]
        assert [r[0] for r in rows] == [f"{i}.jpg" for i in ids]
        for i, label in zip(ids, labels, strict=True):
            with Image.open(lip / "TrainVal_images" / f"{split}_images" / f"{i}.jpg") as img:
                assert img.format == "JPEG" and img.mode == "RGB" and img.size == (96, 96)
            assert label.shape == (96, 96) and label.max() <= 19 and label.dtype == np.uint8
            with Image.open(lip / "TrainVal_parsing_annotations" / f"{split}_segmentations" / f"{i}.png") as png:
                assert png.mode == "P" and png.getpalette()[3 * 13 : 3 * 14] == [0, 0, 255]  # LIP palette: Face
    cihp = small / "CIHP" / "instance-level_human_parsing"
    for folder, split, n in (("Training", "train", 4), ("Validation", "val", 3)):
        ids = (cihp / folder / f"{split}_id.txt").read_text().split()
        assert ids == [f"{split}_{i:05d}" for i in range(n)]
        for i in ids:
            assert (cihp / folder / "Images" / f"{i}.jpg").is_file()
            for sub in ("Category_ids", "Instance_ids", "Human_ids"):
                with Image.open(cihp / folder / sub / f"{i}.png") as png:
                    assert png.mode == "P" and png.size == (96, 96)
    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["num_train"] == 6 and manifest["num_cihp_val"] == 3 and manifest["size"] == 96
    assert manifest["joints"][0] == "R_Ankle" and manifest["joints"][15] == "L_Wrist"
    assert sorted(p.name for p in small.iterdir()) == ["CIHP", "LIP", "manifest.json"]
    assert not [p for p in small.parent.iterdir() if p.name.endswith(".tmp")]


def test_every_lip_label_has_pixels_in_the_default_val_set(default_val):
    _, labels, _ = _lip_split(default_val, "val")
    counts = np.bincount(np.concatenate([x.ravel() for x in labels]), minlength=256)
    images_with = np.sum([np.bincount(x.ravel(), minlength=256) > 0 for x in labels], axis=0)
    assert counts[20:].sum() == 0  # values 0-19, no ignore band
    share = counts[:20] / counts.sum()
    # measured (seed 0, 100 images of 192 px): the rarest are Sunglasses ~0.05% and Hat ~0.1%
    assert (share[1:] >= 3e-4).all(), share
    assert (images_with[1:20] >= 8).all(), images_with[:20]  # Jumpsuits, the rarest: 10 images
    assert share[0] < 0.95
    for left, right in LIP_FLIP_PAIRS:  # left and right parts equally common
        assert 0.8 < counts[left] / counts[right] < 1.25


def test_pose_csv_rows_parse_with_missing_and_occluded_joints(default_val):
    ids, _, rows = _lip_split(default_val, "val")
    assert len(rows) == len(ids) == 100 and all(len(r) == 49 for r in rows)
    joints = _joints(rows)
    missing = np.isnan(joints[..., 0])
    np.testing.assert_array_equal(missing, np.isnan(joints).any(axis=2))  # a missing joint is nan,nan,nan
    present = joints[~missing]
    assert set(np.unique(present[:, 2]).tolist()) == {0.0, 1.0}
    assert ((present[:, :2] >= 0) & (present[:, :2] < 192)).all()
    assert 5 <= missing.any(axis=1).sum() <= 40  # some figures are cropped at an edge
    assert (present[:, 2] == 0).sum() >= 5  # and some joints are hidden


def test_visible_joints_lie_on_their_parts(default_val):
    _, labels, rows = _lip_split(default_val, "val")
    joints = _joints(rows)
    allowed = {
        L_ANKLE: {16, 18, 8, 9, 10},
        R_ANKLE: {17, 19, 8, 9, 10},
        L_WRIST: {14, 3, 5, 6, 7, 10},
        R_WRIST: {15, 3, 5, 6, 7, 10},
        HEAD: {1, 2, 4, 13},
    }
    checked = 0
    for label, js in zip(labels, joints, strict=True):
        for k, ok in allowed.items():
            x, y, v = js[k]
            if v == 1:
                assert int(label[int(y), int(x)]) in ok, (k, x, y)
                checked += 1
    assert checked > 300
    shoes = [(label, js) for label, js in zip(labels, joints, strict=True) if js[L_ANKLE, 2] == 1]
    # the ankle sits on the shoe's top edge: its own shoe lies within a few pixels, the other shoe does not
    for label, js in shoes:
        x, y = int(js[L_ANKLE, 0]), int(js[L_ANKLE, 1])
        window = label[max(y - 4, 0) : y + 5, max(x - 4, 0) : x + 5]
        assert (window == 18).any() and not (window == 19).all()


def _orientation_ok(label, js):
    """Mean x of LeftArm pixels vs RightArm pixels agrees with L_Shoulder vs R_Shoulder x in the pose CSV."""
    ys, xs = np.nonzero(label == 14)
    yr, xr = np.nonzero(label == 15)
    return np.sign(xs.mean() - xr.mean()) == np.sign(js[L_SHOULDER, 0] - js[R_SHOULDER, 0])


def test_left_right_orientation_is_consistent_and_the_flip_needs_the_swap(default_val):
    _, labels, rows = _lip_split(default_val, "val")
    joints = _joints(rows)
    usable = [
        (label, js)
        for label, js in zip(labels, joints, strict=True)
        if (label == 14).sum() > 20 and (label == 15).sum() > 20 and not np.isnan(js[[L_SHOULDER, R_SHOULDER], 0]).any()
    ]
    assert len(usable) >= 70
    assert all(_orientation_ok(label, js) for label, js in usable)
    facing = np.array([js[L_SHOULDER, 0] > js[R_SHOULDER, 0] for _, js in usable])
    assert 0.5 < facing.mean() < 0.85  # both orientations occur, most figures face the viewer
    # figures facing the viewer show a face; figures facing away show hair where the face would be
    face_share = np.array([(label == 13).sum() / max((label == 2).sum(), 1) for label, _ in usable])
    assert face_share[facing].mean() > 3 * face_share[~facing].mean()
    # a horizontal flip: mirrored joints swap L/R names; the mirrored labels agree only after the label swap
    swap = np.arange(256)
    for a, b in LIP_FLIP_PAIRS:
        swap[a], swap[b] = b, a
    joint_swap = [5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10]
    for label, js in usable[:20]:
        flipped_js = js[joint_swap].copy()
        flipped_js[:, 0] = label.shape[1] - 1 - flipped_js[:, 0]
        mirrored = label[:, ::-1]
        assert _orientation_ok(swap[mirrored], flipped_js)
        assert not _orientation_ok(mirrored, flipped_js)


def test_left_side_cues_the_watch_is_on_the_left_wrist():
    darker_left = 0
    n = 0
    for i in range(12):
        image, label, joints = demo_people.render_lip_image(np.random.default_rng([7, i]), 160)
        near = {}
        for k in (L_WRIST, R_WRIST):
            x, y, v = joints[k]
            if v != 1:
                break
            # the watch sits just above the wrist on the forearm: darkest pixel within 5 px of the wrist joint
            patch = image[max(int(y) - 5, 0) : int(y) + 6, max(int(x) - 5, 0) : int(x) + 6].astype(float).sum(2)
            near[k] = patch.min()
        else:
            n += 1
            darker_left += near[L_WRIST] < near[R_WRIST]
    assert n >= 6 and darker_left >= n - 1


def test_cihp_id_maps_are_consistent(small):
    cihp = small / "CIHP" / "instance-level_human_parsing"
    seen_people = []
    for folder, split in (("Training", "train"), ("Validation", "val")):
        for i in (cihp / folder / f"{split}_id.txt").read_text().split():
            cat, inst, hum = (
                np.asarray(Image.open(cihp / folder / sub / f"{i}.png")).astype(int)
                for sub in ("Category_ids", "Instance_ids", "Human_ids")
            )
            np.testing.assert_array_equal(hum > 0, cat > 0)
            np.testing.assert_array_equal(hum > 0, inst > 0)
            n_people = hum.max()
            assert 1 <= n_people <= 3 and sorted(np.unique(hum[hum > 0]).tolist()) == list(range(1, n_people + 1))
            ids = np.unique(inst[inst > 0]).tolist()
            assert ids == list(range(1, len(ids) + 1))
            for k in ids:
                part = inst == k
                assert len(np.unique(hum[part])) == 1 and len(np.unique(cat[part])) == 1
            # one instance per (person, part) pair
            assert len(ids) == len({(h, c) for h, c in zip(hum[hum > 0], cat[hum > 0], strict=True)})
            assert cat.max() <= 19
            seen_people.append(n_people)
    assert max(seen_people) >= 2


def test_cihp_people_stay_half_visible_and_have_torso_skin():
    counts, with_torso_skin = [], 0
    for i in range(6):
        rng = np.random.default_rng([11, i])
        _, cat, inst, hum = demo_people.render_cihp_image(rng, 128)
        counts.append(hum.max())
        for k in range(1, hum.max() + 1):
            assert (hum == k).sum() > 30
        with_torso_skin += bool((cat[hum > 0] == 10).any())  # CIHP's Torso-skin (the neck; a scarf may hide it)
    assert max(counts) >= 2 and with_torso_skin >= 4


def test_ensure_regenerates_only_when_the_parameters_differ(tmp_path, monkeypatch):
    small_params = dict(seed=0, num_train=1, num_val=1, size=64, num_cihp_train=1, num_cihp_val=1)
    monkeypatch.setattr(demo_people, "DEMO_PEOPLE_PARAMS", small_params)
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    root = ensure_demo_people()
    assert root == tmp_path / "cache" / "demo_people"
    manifest = root / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    label = root / "LIP" / "TrainVal_parsing_annotations" / "val_segmentations" / "val_00000.png"
    label_stamp = label.stat().st_mtime_ns
    assert ensure_demo_people() == root
    assert manifest.stat().st_mtime_ns == stamp and label.stat().st_mtime_ns == label_stamp
    monkeypatch.setattr(demo_people, "DEMO_PEOPLE_PARAMS", dict(small_params, num_val=2))
    ensure_demo_people(root)
    assert json.loads(manifest.read_text())["num_val"] == 2
    assert (root / "LIP" / "TrainVal_images" / "val_id.txt").read_text().split() == ["val_00000", "val_00001"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(DatasetError, match="thesis.tex"):
        generate_demo_people(tmp_path / "mine", num_train=1, num_val=1, size=64, num_cihp_train=1, num_cihp_val=1)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"
