import numpy as np
import pytest
import torch
from PIL import Image

from seglab.config import DataConfig
from seglab.data.palettes import get_label_set
from seglab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HorizontalFlipWithSwap,
    build_transforms,
    normalize_image,
)


def _unnormalize(x: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def _colour_coded_scene(h=70, w=90):
    """A label of blocks and an image whose colour is the palette colour of each pixel's class."""
    label = np.zeros((h, w), np.uint8)
    label[5:40, 10:35] = 1
    label[20:65, 45:85] = 2
    label[45:60, 5:30] = 3
    label[:, 88:] = 4  # a thin stripe at the right edge: shows a flip
    colors = np.array(get_label_set("voc").colors[:5], np.uint8)
    return Image.fromarray(colors[label]), label, colors


def _interior(y: np.ndarray, r: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)x(2r+1) neighbourhood holds a single label."""
    padded = np.pad(y.astype(int), r, constant_values=-1)
    same = np.ones(y.shape, bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            same &= padded[dy : dy + y.shape[0], dx : dx + y.shape[1]] == y
    return same


def test_normalize_image_accepts_pil_numpy_and_tensor():
    arr = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    a = normalize_image(Image.fromarray(arr))
    b = normalize_image(arr)
    c = normalize_image(torch.from_numpy(arr).permute(2, 0, 1))
    assert a.dtype == torch.float32 and a.shape == (3, 4, 5)
    assert torch.equal(a, b) and torch.equal(a, c)
    expected = (arr[1, 2, 0] / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert a[0, 1, 2].item() == pytest.approx(expected, abs=1e-6)


def test_train_transforms_keep_image_and_mask_aligned():
    image, label, colors = _colour_coded_scene()
    cropped = build_transforms(DataConfig(crop_size=[48, 64], scale_range=[0.5, 1.5], hflip=True), train=True)
    whole = build_transforms(DataConfig(crop_size=[72, 96], scale_range=[0.6, 1.0], hflip=True), train=True)
    flips = 0
    for seed in range(20):
        torch.manual_seed(seed)
        transform, size = (cropped, (48, 64)) if seed < 10 else (whole, (72, 96))
        x, y = transform(image, label)
        assert x.shape == (3, *size) and x.dtype == torch.float32
        assert y.shape == size and y.dtype == torch.int64
        rgb, y = _unnormalize(x), y.numpy()
        inside = _interior(y) & (y != 255)  # away from edges, where interpolation mixes colours
        assert inside.sum() > 500
        match = (np.abs(rgb.astype(int) - colors[np.where(inside, y, 0)].astype(int)).max(axis=2) <= 3) & inside
        assert match.sum() >= 0.99 * inside.sum(), (seed, match.sum(), inside.sum())
        if transform is whole:  # the whole scene is in view: a flip puts the right-edge stripe (4) left of class 1
            flips += int(np.nonzero(y == 4)[1].mean() < np.nonzero(y == 1)[1].mean())
    assert 0 < flips < 10


def test_independent_flips_would_be_caught():
    """The alignment check above fails when image and mask are flipped independently."""
    image, label, colors = _colour_coded_scene()
    rgb = np.asarray(image)[:, ::-1]
    inside = _interior(label)
    match = (np.abs(rgb.astype(int) - colors[label].astype(int)).max(axis=2) <= 3) & inside
    assert match.sum() < 0.99 * inside.sum()


def test_padding_fills_the_mask_with_255():
    image, label, _ = _colour_coded_scene(20, 30)
    cfg = DataConfig(crop_size=[40, 50], scale_range=[1.0, 1.0], hflip=False)
    torch.manual_seed(0)
    x, y = build_transforms(cfg, train=True)(image, label)
    assert y.shape == (40, 50)
    assert (y[20:] == 255).all() and (y[:, 30:] == 255).all()
    assert (_unnormalize(x)[20:] == 0).all()  # the image is padded with black
    assert torch.equal(y[:20, :30], torch.from_numpy(label).long())


def test_flip_swaps_left_and_right_labels():
    lip = get_label_set("lip")
    mask = np.zeros((4, 8), np.uint8)
    mask[:, :4], mask[:, 4:] = 14, 15  # LeftArm on the left, RightArm on the right
    mask[0, 0] = 255
    image = np.zeros((4, 8, 3), np.uint8)
    cfg = DataConfig(crop_size=[4, 8], scale_range=[1.0, 1.0], hflip=True, label_swap=[list(p) for p in lip.flip_pairs])
    transform = build_transforms(cfg, train=True)
    flips = 0
    for seed in range(8):
        torch.manual_seed(seed)
        _, y = transform(image, mask)
        assert (y[1:, :4] == 14).all() and (y[1:, 4:] == 15).all()  # swapped back: still 14 on the left
        flipped = y[0, -1].item() == 255
        flips += flipped
        assert (y[0, :4] == 14).sum().item() == (4 if flipped else 3)
    assert 0 < flips < 8


def test_flip_with_swap_transform_directly():
    from torchvision import tv_tensors

    flip = HorizontalFlipWithSwap([(1, 2)], p=1.0)
    img = tv_tensors.Image(torch.arange(6, dtype=torch.uint8).view(1, 1, 6).expand(3, 1, 6).clone())
    mask = tv_tensors.Mask(torch.tensor([[1, 1, 0, 255, 2, 3]], dtype=torch.uint8))
    out_img, out_mask = flip(img, mask)
    assert out_mask.tolist() == [[3, 1, 255, 0, 2, 2]]
    assert out_img[0, 0].tolist() == [5, 4, 3, 2, 1, 0]


def test_eval_transforms_only_normalise():
    image, label, _ = _colour_coded_scene()
    x, y = build_transforms(DataConfig(), train=False)(image, label)
    assert x.shape == (3, 70, 90) and torch.equal(y, torch.from_numpy(label).long())
    assert torch.equal(x, normalize_image(image))


def test_color_jitter_changes_the_image_only():
    image, label, _ = _colour_coded_scene()
    cfg = DataConfig(crop_size=[70, 90], scale_range=[1.0, 1.0], hflip=False, color_jitter=0.4)
    torch.manual_seed(0)
    x, y = build_transforms(cfg, train=True)(image, label)
    assert torch.equal(y, torch.from_numpy(label).long())
    assert not torch.equal(x, normalize_image(image))


def test_base_size_sets_the_longer_side():
    from torchvision import tv_tensors

    from seglab.data.transforms import RandomScale

    img = tv_tensors.Image(torch.zeros(3, 50, 100, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(50, 100, dtype=torch.uint8))
    out_img, out_mask = RandomScale((1.0, 1.0), base_size=200)(img, mask)
    assert out_img.shape == (3, 100, 200) and out_mask.shape == (100, 200)
