"""Fuzzing: the image and label readers, the config loader and the COCO loader, fed random and mutated input,
either load or raise a seglab error (SeglabError), never another exception type.

Deterministic (``derandomize=True``); ``SEGLAB_FUZZ_EXAMPLES`` sets the examples per target (default 50).
"""

import io
import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from seglab.config import load_config
from seglab.data.io import read_image, read_label
from seglab.errors import SeglabError

EXAMPLES = int(os.environ.get("SEGLAB_FUZZ_EXAMPLES", "50"))
FUZZ = settings(
    derandomize=True, max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array)
    if kwargs.pop("palette", False):
        img = img.convert("P")
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _seed_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    gray = rng.integers(0, 21, (9, 11), dtype=np.uint8)
    return [
        _encode(rgb, "JPEG", quality=80),
        _encode(rgb, "PNG"),
        _encode(gray, "PNG"),
        _encode(gray, "PNG", palette=True),
        _encode(gray.astype(np.uint16) * 300, "PNG"),
        _encode(np.dstack([rgb, gray]), "PNG"),
        _encode(rgb, "BMP"),
        _encode(rgb, "TIFF"),
    ]


SEEDS = _seed_files()


@st.composite
def mutated_images(draw) -> bytes:
    """A valid small image file with some bytes flipped, then possibly truncated."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut] if draw(st.booleans()) else data)


def _read_both(path, data: bytes) -> None:
    path.write_bytes(data)
    for reader in (read_image, read_label):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL warns about odd chunks; only exceptions matter here
                out = reader(path)
        except SeglabError:
            continue
        array = np.asarray(out)
        assert array.dtype == np.uint8
        assert array.ndim == (3 if reader is read_image else 2)


@FUZZ
@given(data=st.binary(max_size=512))
def test_readers_on_random_bytes(tmp_path, data):
    _read_both(tmp_path / "x.png", data)


@FUZZ
@given(data=st.one_of(
    mutated_images(),
    st.tuples(st.sampled_from(SEEDS), st.binary(max_size=256)).map(lambda t: t[0][:16] + t[1]),  # valid header
))
def test_readers_on_mutated_images(tmp_path, data):
    _read_both(tmp_path / "x.img", data)


def test_seed_images_read(tmp_path):
    """The unmutated seeds load, so the mutation fuzz starts from valid files."""
    for k, data in enumerate(SEEDS):
        (tmp_path / f"s{k}").write_bytes(data)
        assert np.asarray(read_image(tmp_path / f"s{k}")).shape == (9, 11, 3)


_KEYS = ["name", "model", "data", "train", "optim", "eval", "schedule", "iters", "lr", "crop_size", "root",
         "num_classes", "kwargs", "batch_size", "amp", "seed", "output_dir", "palette", "label_swap", "x"]
_yaml_tokens = st.sampled_from(
    [*_KEYS, ":", ": ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "1", "-3", "2.5", "true", "null", "~", "'a'",
     '"b"', "&a", "*a", "!!python/object:os.system", "!!binary", "#", "|", ">", "---", "...", "%YAML 1.2", "\t",
     "1e400", ".nan", "0x1F", "<<: *a", "?", "@"]
)


@FUZZ
@given(text=st.one_of(st.lists(_yaml_tokens, max_size=40).map("".join), st.text(max_size=200)))
def test_config_loader_on_yamlish_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    try:
        cfg = load_config(path)
    except SeglabError:
        return
    assert cfg.name is not None


@FUZZ
@given(overrides=st.lists(
    st.one_of(
        st.tuples(st.lists(st.sampled_from(_KEYS), min_size=1, max_size=3).map(".".join), _yaml_tokens,
                  st.lists(_yaml_tokens, max_size=5).map("".join)).map(lambda t: f"{t[0]}={t[1]}{t[2]}"),
        st.text(max_size=40),
    ),
    max_size=4,
))
def test_config_overrides(overrides):
    try:
        load_config(None, overrides)
    except SeglabError:
        pass


# -- COCO ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_demo(tmp_path_factory):
    from seglab.data.datasets.coco import coco_layout
    from seglab.data.datasets.demo import generate_demo_data

    root = generate_demo_data(tmp_path_factory.mktemp("coco_fuzz"), seed=0, num_train=2, num_val=1, size=32)
    ann_file, image_dir = coco_layout(root, "train")
    return json.loads(ann_file.read_text()), image_dir


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["images", "annotations", "categories", "id", "image_id", "category_id", "bbox",
                         "segmentation", "counts", "size", "iscrowd", "area", "width", "height", "file_name",
                         "name"]) | st.text(max_size=4), children, max_size=5),
    max_leaves=20,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


@st.composite
def mutated_coco(draw, base):
    data = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        node = data
        for key in path[:-1]:
            node = node[key]
        if draw(st.booleans()) and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = draw(_json)
    return json.dumps(data, allow_nan=True)


def _load_coco(tmp_path, text: str, image_dir) -> None:
    from seglab.data.datasets.coco import COCOInstances

    ann_file = tmp_path / "instances_fuzz.json"
    ann_file.write_text(text)
    try:
        ds = COCOInstances(ann_file, image_dir)
        for i in range(len(ds)):
            image, target = ds[i]
            assert image.shape[0] == 3 and target["masks"].shape[0] == target["boxes"].shape[0]
    except SeglabError:
        pass


@FUZZ
@given(data=st.data())
def test_coco_loader_on_random_and_mutated_json(tmp_path, coco_demo, data):
    base, image_dir = coco_demo
    text = data.draw(st.one_of(
        _json.map(lambda v: json.dumps(v, allow_nan=True)),
        mutated_coco(base),
        st.binary(max_size=64).map(lambda b: json.dumps(base)[: len(b) * 8]),  # truncated JSON
    ))
    _load_coco(tmp_path, text, image_dir)
