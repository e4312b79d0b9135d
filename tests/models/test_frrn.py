import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.losses import SegmentationLoss
from seglab.model_table import count_at_paper_setting
from seglab.models import model_info
from seglab.models.semantic.frrn import FRRN, FRRU, frrn_a, frrn_b


def _tiny(num_classes: int = 3) -> FRRN:
    """FRRN A's wiring with narrow groups, for fast CPU tests."""
    return FRRN(num_classes=num_classes, encoder=((1, 8, 2), (1, 8, 4)), decoder=((1, 8, 2),))


@pytest.mark.parametrize(
    ("name", "count", "reference", "size"),
    [("frrn_a", 17_746_803, 17_712_243, (256, 512)), ("frrn_b", 24_755_699, 24_721_139, (512, 1024))],
)
def test_paper_setting_is_within_0_2_percent_of_the_official_layer_list(name, count, reference, size):
    info = model_info(name)
    assert info.task == "semantic" and info.year == 2017 and info.input_size == size
    assert info.paper_kwargs == {"num_classes": 19} and info.paper_params == reference
    assert count_at_paper_setting(name) == count
    assert count - reference == 34_560  # one 3x3 conv 80 -> 48; see the module docstring
    assert abs(count - reference) / reference < 0.01


def test_frrn_b_adds_a_stage_at_one_32nd():
    with torch.device("meta"):
        a, b = frrn_a(), frrn_b()
    assert [g[0].scale for g in a.encoder] == [2, 4, 8, 16] and [g[0].scale for g in a.decoder] == [8, 4, 2]
    assert [g[0].scale for g in b.encoder] == [2, 4, 8, 16, 32] and [g[0].scale for g in b.decoder] == [16, 8, 4, 2]
    assert [len(g) for g in a.encoder] == [3, 4, 2, 2] and [len(g) for g in b.decoder] == [2, 2, 2, 2]
    assert a.decoder[-1][-1].conv2[0].out_channels == 96  # official code; pytorch-semseg uses 48
    assert a.divisor == 16 and b.divisor == 32


def test_odd_input_size_gives_logits_at_the_input_size():
    model = _tiny().eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 93)).shape == (1, 3, 67, 93)
        assert model(torch.randn(2, 3, 5, 3)).shape == (2, 3, 5, 3)


def test_odd_input_size_with_frrn_b_gives_logits_at_the_input_size():
    model = frrn_b(num_classes=19).to("meta").eval()
    assert model(torch.empty(1, 3, 67, 93, device="meta")).shape == (1, 19, 67, 93)


def test_residual_stream_stays_at_full_resolution_with_32_channels():
    model = _tiny().eval()
    seen = []
    for module in model.modules():
        if isinstance(module, FRRU):
            module.register_forward_hook(lambda m, args, out: seen.append((m.scale, out[1].shape, out[0].shape)))
    with torch.no_grad():
        model(torch.randn(1, 3, 67, 93))
    assert [scale for scale, _, _ in seen] == [2, 4, 2]
    padded = (68, 96)  # 67 x 93 padded to a multiple of 4 here (of 16 / 32 in FRRN A / B)
    for scale, residual, pooling in seen:
        assert residual == (1, 32, *padded)
        assert pooling[-2:] == (padded[0] // scale, padded[1] // scale)


def test_frru_adds_the_upsampled_1x1_conv_to_the_max_pooled_residual_stream():
    torch.manual_seed(0)
    unit = FRRU(8, 16, scale=4).eval()
    pooling, residual = torch.randn(1, 8, 3, 5), torch.randn(1, 32, 12, 20)
    with torch.no_grad():
        new_pooling, new_residual = unit(pooling, residual)
        expected_pooling = unit.conv2(unit.conv1(torch.cat([pooling, F.max_pool2d(residual, 4)], dim=1)))
        update = F.interpolate(unit.conv_res(expected_pooling), scale_factor=4, mode="nearest")
    assert unit.conv1[0].in_channels == 8 + 32 and unit.conv_res.out_channels == 32
    assert unit.conv_res.bias is not None and unit.conv_res.kernel_size == (1, 1)
    torch.testing.assert_close(new_pooling, expected_pooling)
    torch.testing.assert_close(new_residual, residual + update)  # the residual stream is updated by addition
    nn.init.zeros_(unit.conv_res.weight)
    nn.init.zeros_(unit.conv_res.bias)
    with torch.no_grad():
        torch.testing.assert_close(unit(pooling, residual)[1], residual)


def test_a_few_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = _tiny(num_classes=3).train()
    x, target = torch.randn(2, 3, 16, 20), torch.randint(0, 3, (2, 16, 20))
    criterion = SegmentationLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss, _ = criterion(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
