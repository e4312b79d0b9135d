import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab
from seglab.model_table import count_at_paper_setting
from seglab.models import count_parameters
from seglab.models.semantic.unet import mirror_pad, unet

PAPER = {"in_channels": 1, "num_classes": 2, "padding": False, "batch_norm": False}


def test_paper_setting_has_31_030_658_parameters_in_23_conv_layers():
    assert count_at_paper_setting("unet") == 31_030_658
    model = unet(**PAPER)
    assert count_parameters(model) == 31_030_658
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.device("meta"):
        rgb = unet(**{**PAPER, "in_channels": 3})
    assert count_parameters(rgb) - 31_030_658 == 1_152  # 2 more input channels x 64 x 3 x 3


def test_unpadded_572_gives_388_valid_output():
    model = unet(**{**PAPER, "base_width": 4}).eval()  # the geometry does not depend on the width
    assert model.margin == 92 and model.tile_size(388) == 572
    with torch.no_grad():
        assert model.forward_tile(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)


@pytest.mark.parametrize("padding", [True, False])
@pytest.mark.parametrize("depth", [2, 4])
def test_output_matches_input_size_for_odd_sizes(padding, depth):
    model = unet(num_classes=3, base_width=4, depth=depth, padding=padding).eval()
    for size in [(67, 93), (1, 1), (17, 8)]:
        with torch.no_grad():
            assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)


def test_overlap_tile_output_is_centred_on_its_input_pixel():
    # Unpadded, output pixel r is computed from a window around input pixel r: the 2x2 pools shift the window
    # by up to 1.5 px depending on r's phase on the pooling grid (4 phases at depth 2), centred on average.
    model = unet(num_classes=2, base_width=2, depth=2, padding=False, batch_norm=False).eval()
    x = torch.randn(4, 3, 64, 64, requires_grad=True)  # one sample per phase; samples do not interact
    out = model(x)
    sum(out[i, 0, 32 + i, 30] for i in range(4)).backward()
    centres = []
    for i in range(4):
        rows = x.grad[i].abs().sum(dim=(0, 2)).nonzero().squeeze(1)
        assert rows.max() - rows.min() + 1 == 2 * model.margin + 4
        centres.append((rows.min() + rows.max()).item() / 2 - (32 + i))
    assert max(abs(c) for c in centres) <= 1.5 and sum(centres) == 0


def test_fuses_by_concatenation():
    model = unet(num_classes=2, base_width=8)
    for upconv, block in zip(model.upconvs, model.decoder, strict=True):
        assert upconv.out_channels == upconv.in_channels // 2  # up-conv halves the channels
        assert block[0][0].in_channels == 2 * upconv.out_channels  # [encoder feature, up-conv output]
    assert [u.out_channels for u in model.upconvs] == [64, 32, 16, 8]


def test_mirror_pad_reflects_beyond_the_image_size():
    x = torch.arange(3.0).view(1, 1, 1, 3)
    assert mirror_pad(x, 5, 5, 0, 0).flatten().tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1]
    torch.testing.assert_close(mirror_pad(x, 2, 1, 0, 0), F.pad(x, (2, 1, 0, 0), mode="reflect"))
    assert mirror_pad(x, 0, 0, 2, 3).shape == (1, 1, 6, 3)  # height 1: replicated


def test_slim_unet_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = seglab.create_model("unet", num_classes=5, base_width=16)
    x = torch.randn(2, 3, 32, 32)
    target = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
