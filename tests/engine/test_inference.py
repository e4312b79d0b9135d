import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.engine.inference import Predictor, infer_probs, parse_tta, sliding_windows


def pointwise_model(num_classes=5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 1)).eval()


def context_model(num_classes=5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1)).eval()


@pytest.fixture
def image():
    return torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(1))


def test_window_helper_covers_every_pixel_with_the_last_window_on_the_border():
    # rows: (10 - 4 + 3 - 1) // 3 + 1 = 3 windows starting 0, 3, 6
    assert sliding_windows((10, 4), (4, 4), (3, 3)) == [(0, 4, 0, 4), (3, 7, 0, 4), (6, 10, 0, 4)]
    # 11 rows: starts 0, 3, 6, 9 -> the last is shifted back to 7 so that it ends at the border
    assert [w[:2] for w in sliding_windows((11, 4), (4, 4), (3, 3))] == [(0, 4), (3, 7), (6, 10), (7, 11)]
    assert sliding_windows((3, 2), (4, 4), (2, 2)) == [(0, 3, 0, 2)]  # smaller than the crop: one window
    size, crop = (37, 53), (16, 16)
    count = torch.zeros(size)
    for y0, y1, x0, x1 in sliding_windows(size, crop, (11, 11)):
        assert (y1 - y0, x1 - x0) == crop and y0 >= 0 and x0 >= 0 and y1 <= size[0] and x1 <= size[1]
        count[y0:y1, x0:x1] += 1
    assert bool((count > 0).all())
    assert count[-1, -1] > 0 and count[0, -1] > 0 and count[-1, 0] > 0


def test_slide_equals_whole_for_a_pointwise_model(image):
    model = pointwise_model()
    with torch.inference_mode():
        whole = infer_probs(model, image)
        # 37 x 53 is not divisible by the stride; windows overlap unevenly
        slide = infer_probs(model, image, mode="slide", crop_size=(16, 16), stride=(11, 11))
        big_crop = infer_probs(model, image, mode="slide", crop_size=(64, 64), stride=(32, 32))
    assert slide.shape == whole.shape == (2, 5, 37, 53)
    torch.testing.assert_close(slide, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(big_crop, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(whole.sum(1), torch.ones(2, 37, 53))


def test_slide_differs_from_whole_for_a_model_with_spatial_context(image):
    model = context_model()
    with torch.inference_mode():
        whole = infer_probs(model, image)
        slide = infer_probs(model, image, mode="slide", crop_size=(16, 16), stride=(11, 11))
        # crop larger than the image: zero padding at the bottom/right, then cropped back
        padded = infer_probs(model, image, mode="slide", crop_size=(40, 60), stride=(20, 20))
        expected = F.softmax(model(F.pad(image, (0, 7, 0, 3))), dim=1)[:, :, :37, :53]
    assert (slide - whole).abs().max() > 1e-3
    torch.testing.assert_close(padded, expected, atol=1e-6, rtol=0)
    # far from any window edge the windows see the same context as the whole image
    torch.testing.assert_close(slide[:, :, 2:9, 2:9], whole[:, :, 2:9, 2:9], atol=1e-6, rtol=0)


def test_flip_averages_with_the_flipped_and_channel_swapped_output(image):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, (1, 3), padding=(0, 1)).eval()  # asymmetric kernel: not flip-equivariant
    with torch.inference_mode():
        got = infer_probs(model, image, flip=True, flip_pairs=[(1, 2)])
        plain = F.softmax(model(image), dim=1)
        flipped = F.softmax(model(image.flip(-1)), dim=1).flip(-1)
        swapped = flipped[:, [0, 2, 1, 3]]
        no_swap = infer_probs(model, image, flip=True)
    torch.testing.assert_close(got, (plain + swapped) / 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(no_swap, (plain + flipped) / 2, atol=1e-6, rtol=0)
    assert (got - no_swap).abs().max() > 1e-3
    assert (got - plain).abs().max() > 1e-3


def test_multi_scale_returns_probabilities_at_the_input_size(image):
    model = context_model()
    with torch.inference_mode():
        probs = infer_probs(model, image, scales=(0.5, 1.0, 1.5))
        half = infer_probs(model, image, scales=(0.5,))
        small = F.interpolate(image, size=(19, 27), mode="bilinear", align_corners=False)  # int(37*.5+.5)
        expected = F.interpolate(F.softmax(model(small), 1), size=(37, 53), mode="bilinear", align_corners=False)
        slide_ms = infer_probs(model, image, mode="slide", crop_size=(16, 16), stride=(11, 11), scales=(0.75, 1.25),
                               flip=True)
    assert probs.shape == slide_ms.shape == (2, 5, 37, 53)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 53))
    torch.testing.assert_close(half, expected, atol=1e-6, rtol=0)


def test_dict_output_at_lower_resolution_is_resized(image):
    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, stride=2, padding=1)

        def forward(self, x):
            return {"out": self.conv(x), "aux": []}

    model = Half().eval()
    with torch.inference_mode():
        got = infer_probs(model, image)
        logits = F.interpolate(model.conv(image), size=(37, 53), mode="bilinear", align_corners=False)
    assert got.shape == (2, 3, 37, 53)
    torch.testing.assert_close(got, F.softmax(logits, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "sliding"}, "mode"),
        ({"mode": "slide", "crop_size": (0, 8)}, "crop_size"),
        ({"mode": "slide", "stride": (4, -1)}, "stride"),
        ({"scales": ()}, "scales"),
        ({"scales": (1.0, 0.0)}, "scales"),
        ({"flip": True, "flip_pairs": [(1, 9)]}, "flip_pairs"),
    ],
)
def test_bad_arguments_raise(image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        infer_probs(pointwise_model(), image, **kwargs)


def test_parse_tta():
    assert parse_tta(["flip", "scales=0.75,1,1.25"]) == (True, (0.75, 1.0, 1.25))
    assert parse_tta("scales=0.5,1") == (False, (0.5, 1.0))
    assert parse_tta(["flip"]) == (True, None)
    with pytest.raises(ValueError, match="rotate"):
        parse_tta(["rotate"])


def test_predictor_on_uint8_numpy_returns_int64_labels():
    model = pointwise_model(4)
    model.train()
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(21, 30, 3), dtype=np.uint8)
    predictor = Predictor(model, tta=["flip", "scales=0.75,1,1.25"])
    assert predictor.flip and predictor.scales == (0.75, 1.0, 1.25)
    assert not model.training
    labels = predictor(array)
    assert labels.shape == (21, 30) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 4

    from PIL import Image

    from seglab.data.transforms import normalize_image

    plain = Predictor(model)
    x = normalize_image(array)
    with torch.inference_mode():
        expected = infer_probs(model, x[None])[0]
    torch.testing.assert_close(plain.predict_probs(array), expected)
    np.testing.assert_array_equal(plain(array), expected.argmax(0).numpy())
    np.testing.assert_array_equal(plain(Image.fromarray(array)), plain(array))
    np.testing.assert_array_equal(plain(torch.from_numpy(array).permute(2, 0, 1)), plain(array))
    np.testing.assert_array_equal(plain(x), plain(array))  # float tensor: already normalised
    batch = plain.predict_batch([array, array[:10], array])
    assert [b.shape for b in batch] == [(21, 30), (10, 30), (21, 30)]
    np.testing.assert_array_equal(batch[2], plain(array))
    with pytest.raises(ValueError, match="uint8"):
        plain(array.astype(np.float32))
