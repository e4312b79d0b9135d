"""The human-parsing label sets: LIP's colours from the LIP/CIHP tools, the flip swap tables, names and joints."""

from seglab.data.palettes import (
    ATR_FLIP_PAIRS,
    LIP_FLIP_PAIRS,
    LIP_JOINT_FLIP_PAIRS,
    LIP_JOINTS,
    get_label_set,
    list_label_sets,
)

ISSUE_LIP_COLORS = [
    (0, 0, 0), (128, 0, 0), (255, 0, 0), (0, 85, 0), (170, 0, 51), (255, 85, 0), (0, 0, 85), (0, 119, 221),
    (85, 85, 0), (0, 85, 85), (85, 51, 0), (52, 86, 128), (0, 128, 0), (0, 0, 255), (51, 170, 221),
    (0, 255, 255), (85, 255, 170), (170, 255, 85), (255, 255, 0), (255, 170, 0),
]  # fmt: skip


def schp_get_palette(num_cls):
    """SCHP's utils get_palette, rewritten here as the reference (flat [r, g, b, r, g, b, ...])."""
    palette = [0] * (num_cls * 3)
    for j in range(num_cls):
        lab, i = j, 0
        while lab:
            palette[j * 3 + 0] |= ((lab >> 0) & 1) << (7 - i)
            palette[j * 3 + 1] |= ((lab >> 1) & 1) << (7 - i)
            palette[j * 3 + 2] |= ((lab >> 2) & 1) << (7 - i)
            i += 1
            lab >>= 3
    return [tuple(palette[k : k + 3]) for k in range(0, len(palette), 3)]


def test_lip_and_cihp_colours_are_the_issue_colours_exactly():
    for name in ("lip", "cihp"):
        ls = get_label_set(name)
        assert list(ls.colors) == ISSUE_LIP_COLORS
        assert ls.num_classes == 20
        # the P-mode palette starts with these colours, index order
        assert ls.palette_bytes()[:60] == bytes(v for rgb in ISSUE_LIP_COLORS for v in rgb)


def test_cihp_differs_from_lip_only_at_label_10():
    lip, cihp = get_label_set("lip"), get_label_set("cihp")
    assert lip.classes[10] == "Jumpsuits" and cihp.classes[10] == "Torso-skin"
    assert [i for i in range(20) if lip.classes[i] != cihp.classes[i]] == [10]
    assert cihp.flip_pairs == lip.flip_pairs == ((14, 15), (16, 17), (18, 19))


def test_flip_pairs_swap_left_and_right_names():
    for name, pairs in (("lip", LIP_FLIP_PAIRS), ("cihp", LIP_FLIP_PAIRS), ("atr", ATR_FLIP_PAIRS)):
        ls = get_label_set(name)
        assert ls.flip_pairs == pairs
        for a, b in pairs:
            left, right = ls.classes[a].lower(), ls.classes[b].lower()
            assert left.startswith("left") and right.startswith("right")
            assert left.removeprefix("left") == right.removeprefix("right")  # same part, other side
    assert ATR_FLIP_PAIRS == ((9, 10), (12, 13), (14, 15))
    assert get_label_set("pascal_person_part").flip_pairs == ()


def test_atr_and_pascal_person_part_names_and_voc_colours():
    atr = get_label_set("atr")
    assert atr.classes == (
        "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
        "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag", "Scarf",
    )  # fmt: skip
    assert list(atr.colors) == schp_get_palette(18)
    assert atr.colors[17] == (128, 64, 0)  # by hand: 17 = 0b010001 -> r bit 7, g bit 6
    ppp = get_label_set("pascal_person_part")
    assert ppp.classes == ("Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs")
    assert list(ppp.colors) == schp_get_palette(7)
    assert ppp.colors[:4] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0))
    assert {"lip", "cihp", "atr", "pascal_person_part", "voc"} <= set(list_label_sets())


def test_lip_joints_and_their_flip_pairs():
    assert len(LIP_JOINTS) == 16
    assert LIP_JOINTS[0] == "R_Ankle" and LIP_JOINTS[9] == "Head" and LIP_JOINTS[15] == "L_Wrist"
    assert LIP_JOINT_FLIP_PAIRS == ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
    for a, b in LIP_JOINT_FLIP_PAIRS:  # each pair is the same joint, right then left
        assert LIP_JOINTS[a].startswith("R_") and LIP_JOINTS[b] == "L_" + LIP_JOINTS[a][2:]
    paired = {j for pair in LIP_JOINT_FLIP_PAIRS for j in pair}
    assert sorted(set(range(16)) - paired) == [6, 7, 8, 9]  # pelvis, thorax, neck, head stay
