import pytest

from seglab.data.palettes import LabelSet, get_label_set, list_label_sets, voc_colormap


def test_voc_colormap_is_the_bit_interleaved_voc_palette():
    cmap = voc_colormap()
    assert len(cmap) == 256
    assert cmap[:5] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    assert cmap[15] == (192, 128, 128)  # person
    assert cmap[255] == (224, 224, 192)  # void


def test_voc_has_21_classes_with_the_colormap():
    voc = get_label_set("voc")
    assert voc.num_classes == 21
    assert voc.classes[0] == "background" and voc.classes[15] == "person" and voc.classes[-1] == "tvmonitor"
    assert list(voc.colors) == voc_colormap(21)


def test_lip_colours_and_flip_pairs():
    lip = get_label_set("lip")
    assert lip.num_classes == 20
    assert lip.classes[14:20] == ("LeftArm", "RightArm", "LeftLeg", "RightLeg", "LeftShoe", "RightShoe")
    assert lip.colors[0] == (0, 0, 0) and lip.colors[5] == (255, 85, 0) and lip.colors[11] == (52, 86, 128)
    assert lip.colors[19] == (255, 170, 0)
    assert lip.flip_pairs == ((14, 15), (16, 17), (18, 19))


def test_other_label_sets():
    assert get_label_set("cityscapes").num_classes == 19
    assert get_label_set("cityscapes").colors[0] == (128, 64, 128)
    assert get_label_set("camvid").classes == (
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    )  # fmt: skip
    demo = get_label_set("demo_shapes")
    assert demo.classes == ("background", "circle", "square", "triangle", "star")
    assert list(demo.colors) == voc_colormap(5)
    assert set(list_label_sets()) >= {"voc", "demo_shapes", "lip", "cityscapes", "camvid"}


def test_palette_bytes_puts_class_colours_first_and_void_at_255():
    lip = get_label_set("lip")
    pal = lip.palette_bytes()
    assert len(pal) == 768
    assert tuple(pal[3 * 5 : 3 * 6]) == (255, 85, 0)
    assert tuple(pal[3 * 20 : 3 * 21]) == voc_colormap()[20]  # beyond the classes: VOC colour map
    assert tuple(pal[3 * 255 :]) == (224, 224, 192)


def test_unknown_label_set_lists_the_available_ones():
    with pytest.raises(KeyError, match="voc"):
        get_label_set("nope")


def test_label_set_checks_colour_count():
    with pytest.raises(ValueError):
        LabelSet("bad", ("a", "b"), ((0, 0, 0),))
