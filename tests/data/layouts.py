"""Small folders in the official layouts of Cityscapes, ADE20K, CamVid and COCO-Stuff, written for the tests."""

import numpy as np
from PIL import Image

H, W = 24, 32


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def write_image(path, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def tiled(values, seed):
    """An HxW map holding every value of ``values`` (then random ones of them)."""
    rng = np.random.default_rng(seed)
    flat = np.concatenate([np.asarray(values), rng.choice(values, H * W - len(values))])
    return flat.reshape(H, W).astype(np.uint8)


# cityscapesScripts helpers/labels.py, written out row by row: label id -> train id (255: not evaluated)
CITYSCAPES_ROWS = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3, 13: 4,
    14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def write_cityscapes(root):
    """2 cities x 2 frames in train, 1 city x 2 in val (fine), coarse train labels, one labelTrainIds file, and
    3 sequence frames."""
    n = 0
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            for frame in range(2):
                stem = f"{city}_000000_{frame:06d}"
                write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", n)
                ids = tiled(list(CITYSCAPES_ROWS), n)
                write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
                write_png(root / "gtCoarse" / split / city / f"{stem}_gtCoarse_labelIds.png", np.where(ids == 7, 7, 0))
                n += 1
    trainids = tiled(list(range(19)) + [255], 99)
    write_png(root / "gtFine/val/frankfurt/frankfurt_000000_000001_gtFine_labelTrainIds.png", trainids)
    for frame in range(3):
        write_image(root / f"leftImg8bit_sequence/train/aachen/aachen_000000_{frame:06d}_leftImg8bit.png", 50 + frame)
    return root


def write_ade20k(root):
    """3 training and 2 validation images, annotations holding every value 0-150 and 255."""
    for folder, prefix, n in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
        for i in range(n):
            write_image(root / "images" / folder / f"{prefix}_{i:08d}.jpg", i)
            write_png(root / "annotations" / folder / f"{prefix}_{i:08d}.png", tiled(list(range(151)) + [255], i))
    return root


def write_camvid(root):
    """3 train, 2 val, 1 test image; labels holding 0-11."""
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for i in range(n):
            write_image(root / split / f"0001TP_{i:06d}.png", i)
            write_png(root / f"{split}annot" / f"0001TP_{i:06d}.png", tiled(list(range(12)), i))
    return root


def write_coco_stuff(root):
    """2 train and 2 val images with raw stuffthingmaps holding 0-181 and 255; one val image also has a
    labelTrainIds file."""
    for split, n in (("train2017", 2), ("val2017", 2)):
        for i in range(n):
            write_image(root / "images" / split / f"{i:012d}.jpg", i)
            write_png(root / "annotations" / split / f"{i:012d}.png", tiled(list(range(182)) + [255], i))
    write_png(root / "annotations/val2017/000000000001_labelTrainIds.png", tiled(list(range(171)), 7))
    return root
