"""SCHP's person-centric affine augmentation: the matrix, the warp, and the flip that keeps left/right correct."""

import math

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from seglab.data.palettes import LIP_FLIP_PAIRS
from seglab.data.parsing_transforms import (
    InstanceFlipWithSwap,
    PairStepsTransform,
    PersonAffine,
    box_to_center_scale,
    get_affine_transform,
    warp_joints,
)


def schp_affine_reference(center, scale, rot, output_size):
    """SCHP's get_affine_transform, three points solved as cv2.getAffineTransform does (numpy in place of cv2)."""
    src_w, dst_w, dst_h = scale[0], output_size[1], output_size[0]
    rad = np.pi * rot / 180
    sn, cs = np.sin(rad), np.cos(rad)
    src_dir = np.array([0 * cs - (src_w * -0.5) * sn, 0 * sn + (src_w * -0.5) * cs])
    dst_dir = np.array([0, (dst_w - 1) * -0.5])
    src, dst = np.zeros((3, 2)), np.zeros((3, 2))
    src[0], dst[0] = center, [(dst_w - 1) * 0.5, (dst_h - 1) * 0.5]
    src[1], dst[1] = src[0] + src_dir, dst[0] + dst_dir
    for pts in (src, dst):
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]])
    a = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(a, dst).T  # rows: x' = m00 x + m01 y + m02, y' = ...


def no_randomness(size, **kw):
    return PersonAffine(size, scale_factor=0.0, rotation_p=0.0, **kw)


def test_matrix_equals_schp_three_point_construction():
    rng = np.random.default_rng(0)
    for _ in range(20):
        center = rng.uniform(0, 300, 2)
        scale = rng.uniform(50, 400, 2)
        rot = rng.uniform(-60, 60)
        out = (int(rng.integers(16, 500)), int(rng.integers(16, 500)))
        np.testing.assert_allclose(get_affine_transform(center, scale, rot, out),
                                   schp_affine_reference(center, scale, rot, out), atol=1e-9)
        inv = get_affine_transform(center, scale, rot, out, inv=True)
        p = np.array([3.0, 7.0, 1.0])
        back = inv @ np.append(get_affine_transform(center, scale, rot, out) @ p, 1.0)
        np.testing.assert_allclose(back, p[:2], atol=1e-9)


def test_box_to_center_scale_is_schp_box2cs():
    # 21 wide, 11 tall, output aspect 1: box (20, 10) -> height grows to 20; centre at the pixel centre
    center, scale = box_to_center_scale(21, 11, 1.0)
    assert center.tolist() == [10.0, 5.0] and scale.tolist() == [20.0, 20.0]
    center, scale = box_to_center_scale(11, 21, 0.5)  # 10 wide, 20 tall, w/h = 0.5: unchanged
    assert center.tolist() == [5.0, 10.0] and scale.tolist() == [10.0, 20.0]


def test_known_point_under_scale_and_rotation():
    # 9x9 image, box 8x8 centred at (4, 4); output 5x5: k = (5-1)/8 = 0.5; rotation 90 -> k * [[0, 1], [-1, 0]].
    # (8, 4) - (4, 4) = (4, 0) -> 0.5 * (0, -4) = (0, -2) -> + (2, 2) = (2, 0)
    t = PersonAffine((5, 5), train=False)
    m = t.matrix(9, 9, scale=1.0, rotation=90.0)
    np.testing.assert_allclose(m @ np.array([8.0, 4.0, 1.0]), [2.0, 0.0], atol=1e-12)
    label = torch.zeros(9, 9, dtype=torch.long)
    label[4, 8] = 7  # row y=4, column x=8
    image = torch.zeros(3, 9, 9, dtype=torch.uint8)
    image[:, 4, 8] = 200
    joints = torch.tensor([[8.0, 4.0, 1.0]])
    from seglab.data.parsing_transforms import warp_image, warp_label

    out_label = warp_label(label, m, (5, 5))
    assert out_label[0, 2] == 7 and int((out_label == 7).sum()) == 1 and not (out_label == 255).any()
    out_image = warp_image(image, m, (5, 5))
    assert out_image[:, 0, 2].tolist() == [200, 200, 200] and int(out_image.sum()) == 600
    assert warp_joints(joints, m, (5, 5)).tolist() == [[2.0, 0.0, 1.0]]


def test_no_rotation_no_scale_no_flip_is_the_identity_on_an_image_of_the_output_size():
    for h, w in ((12, 12), (8, 13)):  # square and landscape: SCHP's warp is exact there (see module docstring)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        mask = torch.randint(0, 20, (h, w))
        joints = torch.tensor([[0.0, 0.0, 1.0], [w - 1.0, h - 1.0, 0.0], [-1.0, -1.0, -1.0], [3.5, 2.25, 1.0]])
        t = no_randomness((h, w), flip_p=0.0)
        out_image, out_mask, out_joints = t(image, mask, joints)
        assert torch.equal(out_image, image) and torch.equal(out_mask, mask)
        torch.testing.assert_close(out_joints, joints)
        float_image = image.float() / 255
        torch.testing.assert_close(t(float_image, mask)[0], float_image)


def test_eval_centre_warp_letterboxes_black_and_ignore():
    # 4 tall, 8 wide into 8x8: box (7, 3) grows to (7, 7), k = 7/7 = 1, centre (3.5, 1.5) -> (3.5, 3.5): rows shift by 2
    image = torch.randint(1, 256, (3, 4, 8), dtype=torch.uint8)
    mask = torch.randint(0, 20, (4, 8))
    out_image, out_mask, _ = PersonAffine((8, 8), train=False)(image, mask)
    assert torch.equal(out_image[:, 2:6], image) and torch.equal(out_mask[2:6], mask)
    assert (out_image[:, :2] == 0).all() and (out_image[:, 6:] == 0).all()
    assert (out_mask[:2] == 255).all() and (out_mask[6:] == 255).all()


def arms_sample(h=8, w=10):
    """Left image half: red pixels labelled 14 (LeftArm); right half: blue pixels labelled 15 (RightArm)."""
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0, :, : w // 2] = 255
    image[2, :, w // 2 :] = 255
    mask = torch.full((h, w), 15, dtype=torch.long)
    mask[:, : w // 2] = 14
    return image, mask


def test_flip_keeps_left_and_right_correct():
    image, mask = arms_sample()
    out_image, out_mask, _ = no_randomness((8, 10), flip_p=1.0)(image, mask)
    red = out_image[0] == 255
    assert torch.equal(red[:, 5:], torch.ones(8, 5, dtype=torch.bool))  # the red pixels went to the right half
    assert (out_mask[red] == 15).all() and (out_mask[~red] == 14).all()  # mirrored, the left arm is a right arm
    assert torch.equal(out_mask, mask)  # so the image's left half is still labelled LeftArm
    # the same flip without the swap gets it wrong: the mirrored left arm keeps its LeftArm label
    _, unswapped, _ = no_randomness((8, 10), flip_p=1.0, flip_pairs=())(image, mask)
    assert not torch.equal(unswapped, out_mask) and (unswapped[:, :5] == 15).all()


def test_flip_moves_joint_0_to_slot_5_mirrored():
    h, w = 8, 10
    image, mask = arms_sample(h, w)
    joints = torch.full((16, 3), -1.0)
    joints[0] = torch.tensor([2.0, 3.0, 1.0])  # R_Ankle
    joints[6] = torch.tensor([4.0, 5.0, 0.0])  # Pelvis, occluded, has no partner
    _, _, out = no_randomness((h, w), flip_p=1.0)(image, mask, joints)
    assert out[5].tolist() == [w - 1 - 2.0, 3.0, 1.0]  # now the L_Ankle, at x' = W-1-x
    assert out[0].tolist() == [-1.0, -1.0, -1.0]  # L_Ankle was missing, so R_Ankle is now
    assert out[6].tolist() == [w - 1 - 4.0, 5.0, 0.0]
    assert (out[[i for i in range(16) if i not in (0, 5, 6)]] == -1).all()


def test_joints_leaving_the_output_become_missing():
    m = np.array([[1.0, 0.0, -3.0], [0.0, 1.0, 0.0]])  # shift left by 3
    joints = torch.tensor([[2.0, 1.0, 1.0], [5.0, 1.0, 0.0], [-1.0, -1.0, -1.0], [9.0, 4.0, 1.0]])
    out = warp_joints(joints, m, (5, 6))  # x' in [0, 5] and y' in [0, 4] stay
    assert out.tolist() == [[-1.0, -1.0, -1.0], [2.0, 1.0, 0.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]]


def test_random_draws_follow_schp_distributions():
    t = PersonAffine((16, 16), scale_factor=0.25, rotation=30.0, rotation_p=0.6, flip_p=0.5)
    draws = [t.sample() for _ in range(3000)]
    scales = np.array([d[0] for d in draws])
    rots = np.array([d[1] for d in draws])
    flips = np.array([d[2] for d in draws])
    assert scales.min() >= 0.75 and scales.max() <= 1.25 and abs(np.median(scales) - 1.0) < 0.03
    assert np.isclose(scales, 0.75).any() and np.isclose(scales, 1.25).any()  # clipped at 1 +- sf (|N| > 1)
    assert rots.min() >= -60 and rots.max() <= 60
    assert abs((rots != 0).mean() - 0.6) < 0.04 and abs(flips.mean() - 0.5) < 0.04
    rotated = rots[rots != 0]
    assert abs(rotated.std() - 30.0) < 2.5  # N(0, 30), clipped only beyond 2 sigma
    assert all(d[1] == 0 for d in (PersonAffine((16, 16), rotation_p=0.0).sample() for _ in range(200)))


def test_training_warp_is_reproducible_from_the_seed_and_rotates():
    image = torch.randint(0, 256, (3, 20, 16), dtype=torch.uint8)
    mask = torch.randint(0, 20, (20, 16))
    t = PersonAffine((12, 10), rotation_p=1.0, flip_p=0.0)
    torch.manual_seed(3)
    a = t(image, mask)
    torch.manual_seed(3)
    b = t(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 12, 10) and a[1].shape == (12, 10) and a[1].dtype == torch.int64
    torch.manual_seed(3)
    s, r, flip = t.sample()
    assert r != 0 and not flip
    m = t.matrix(20, 16, s, r)
    k = (10 - 1) / (box_to_center_scale(16, 20, 10 / 12)[1][0] * s)  # (out_w - 1) / scaled box width
    assert math.isclose(abs(np.linalg.det(m[:, :2])), k**2)


def test_stacked_id_maps_are_warped_with_fill_0_and_never_swapped():
    image, mask = arms_sample(6, 8)
    humans = torch.full((6, 8), 14)  # a person id that equals a label of a flip pair
    out_image, out_stack, _ = PersonAffine((10, 8), scale_factor=0, rotation_p=0, flip_p=1.0)(
        image, torch.stack([mask, humans])
    )
    assert out_stack.shape == (2, 10, 8)
    inside = out_stack[0] != 255
    assert (out_stack[1][inside] == 14).all() and (out_stack[1][~inside] == 0).all() and (~inside).any()


def test_crop_pipeline_adapter_refuses_joints():
    from seglab.data.transforms import HorizontalFlipWithSwap

    image, mask = arms_sample()
    t = PairStepsTransform([HorizontalFlipWithSwap(LIP_FLIP_PAIRS, p=1.0)])
    out_image, out_mask, joints = t(image, mask)
    assert torch.equal(out_mask, mask) and joints is None and out_image.dtype == torch.uint8
    with pytest.raises(ValueError, match="PersonAffine"):
        t(image, mask, torch.zeros(16, 3))


def test_instance_flip_swaps_part_labels_and_mirrors_boxes():
    image = tv_tensors.Image(torch.zeros(3, 4, 8, dtype=torch.uint8))
    parsing = torch.zeros(1, 4, 8, dtype=torch.int64)
    parsing[0, 1, 1:3] = 14
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor([[1.0, 1.0, 3.0, 2.0]]), format="XYXY", canvas_size=(4, 8)),
        "masks": tv_tensors.Mask((parsing > 0).to(torch.uint8)),
        "parsing": tv_tensors.Mask(parsing),
    }
    _, out = InstanceFlipWithSwap(LIP_FLIP_PAIRS, p=1.0)(image, target)
    assert out["boxes"].tolist() == [[5.0, 1.0, 7.0, 2.0]]
    expected = torch.zeros(1, 4, 8, dtype=torch.int64)
    expected[0, 1, 5:7] = 15
    assert torch.equal(out["parsing"].as_subclass(torch.Tensor), expected)
    assert torch.equal(out["masks"].as_subclass(torch.Tensor), (expected > 0).to(torch.uint8))
