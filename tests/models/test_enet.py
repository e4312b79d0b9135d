import torch
import torch.nn.functional as F
from torch import nn

from seglab.model_table import count_at_paper_setting
from seglab.models import count_parameters, model_info
from seglab.models.semantic.enet import RegularBottleneck, enet


def test_paper_setting_has_the_port_parameter_count():
    assert model_info("enet").paper_kwargs == {"num_classes": 12}
    assert count_at_paper_setting("enet") == 350_652 == model_info("enet").paper_params
    assert count_parameters(enet(num_classes=12)) == 350_652
    assert count_parameters(enet(num_classes=20)) == 351_804  # Cityscapes; fullconv is 16 x K x 3 x 3
    convs = [m for m in enet(num_classes=12).modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(conv.bias is None for conv in convs)


def test_odd_input_size_gives_logits_at_the_input_size():
    model = enet(num_classes=12).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 257, 383)).shape == (1, 12, 257, 383)
        assert model(torch.randn(2, 3, 1, 9)).shape == (2, 12, 1, 9)


def test_initial_block_concatenates_13_conv_filters_with_3_pooled_channels():
    block = enet(num_classes=12).initial
    assert block.conv.out_channels == 13 and block.conv.stride == (2, 2) and block.conv.kernel_size == (3, 3)
    seen = {}
    block.bn.register_forward_pre_hook(lambda m, args: seen.update(bn_in=args[0]))
    x = torch.randn(2, 3, 16, 24)
    block(x)
    assert seen["bn_in"].shape == (2, 16, 8, 12)
    torch.testing.assert_close(seen["bn_in"][:, :13], block.conv(x))
    torch.testing.assert_close(seen["bn_in"][:, 13:], F.max_pool2d(x, 2))


def test_upsampling_unpools_with_the_indices_of_the_matching_downsampling():
    model = enet(num_classes=5).eval()
    pooled, unpooled = {}, {}

    def record(store, name, pick):
        def hook(module, args, out):
            store[name] = pick(args, out)  # returns None: the output is left as it is

        return hook

    for name in ("downsample1", "downsample2"):
        getattr(model, name).pool.register_forward_hook(record(pooled, name, lambda args, out: out[1]))
    for name in ("upsample4", "upsample5"):
        getattr(model, name).unpool.register_forward_hook(record(unpooled, name, lambda args, out: args))
    with torch.no_grad():
        model(torch.randn(1, 3, 40, 56))
    assert unpooled["upsample4"][1] is pooled["downsample2"]  # stage 4 unpools with stage 2's indices
    assert unpooled["upsample5"][1] is pooled["downsample1"]  # stage 5 with stage 1's
    assert unpooled["upsample4"][0].shape[-2:] == (5, 7) and tuple(unpooled["upsample4"][2][-2:]) == (10, 14)


def test_stages_2_and_3_follow_the_paper_and_dropout_is_001_then_01():
    model = enet(num_classes=12)
    for stage in (model.stage2, model.stage3):
        kinds = []
        for block in stage:
            if isinstance(block.conv[0], nn.Sequential):
                kinds.append(f"asym{block.conv[0][0].kernel_size[0]}")
            else:
                kinds.append(f"dil{block.conv[0].dilation[0]}")
        assert kinds == ["dil1", "dil2", "asym5", "dil4", "dil1", "dil8", "asym5", "dil16"]
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout2d)]
    assert drops == [0.01] * 5 + [0.1] * (1 + 8 + 8 + 3 + 2)
    assert all(isinstance(b, RegularBottleneck) for b in model.stage1) and len(model.stage1) == 4
    assert isinstance(model.stage2[1].activation, nn.PReLU) and isinstance(model.stage4[0].activation, nn.ReLU)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = enet(num_classes=3)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
