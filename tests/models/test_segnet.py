import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg16_bn

from seglab.model_table import count_at_paper_setting
from seglab.models import model_info
from seglab.models.semantic.segnet import SegNet, bayesian_segnet_vgg16, segnet_vgg16


@pytest.fixture(scope="module")
def segnet():
    torch.manual_seed(0)
    return segnet_vgg16(num_classes=5).eval()


@pytest.fixture(scope="module")
def bayesian():
    torch.manual_seed(0)
    return bayesian_segnet_vgg16(num_classes=4).eval()


@pytest.mark.parametrize("name", ["segnet_vgg16", "bayesian_segnet_vgg16"])
def test_paper_parameter_count(name):
    # Caffe layout: 13 encoder + 12 decoder conv(bias)+BN units, conv1_1_D without BN: 29,449,355 at 11 classes.
    assert count_at_paper_setting(name) == 29_449_355 == model_info(name).paper_params
    info = model_info(name)
    assert (info.task, info.input_size, info.paper_kwargs) == ("semantic", (360, 480), {"num_classes": 11})


def test_segnet_unpools_with_the_encoders_indices(segnet):
    pooled, unpooled = {}, {}
    hooks = []
    for stage in range(1, 6):
        pool, unpool = getattr(segnet.encoder, f"pool{stage}"), getattr(segnet, f"unpool{stage}")
        hooks.append(pool.register_forward_hook(lambda m, args, out, s=stage: pooled.__setitem__(s, (args[0], out))))
        hooks.append(unpool.register_forward_pre_hook(lambda m, args, s=stage: unpooled.__setitem__(s, args)))
    try:
        with torch.no_grad():
            segnet(torch.randn(1, 3, 67, 93))
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(pooled) == sorted(unpooled) == [1, 2, 3, 4, 5]
    for stage in range(1, 6):
        pre_pool, (_, indices) = pooled[stage]
        _, unpool_indices, size = unpooled[stage]
        assert unpool_indices is indices  # the very tensor the encoder's pool returned
        assert tuple(size) == tuple(pre_pool.shape[-2:])
    # Unpooling puts each value back at its pool's argmax and zeros elsewhere.
    x = torch.randn(1, 2, 7, 9)
    pooled_x, indices = segnet.encoder.pool1(x)
    restored = segnet.unpool1(pooled_x, indices, x.shape[-2:])
    mask = restored != 0
    assert mask.sum() == pooled_x.numel()
    torch.testing.assert_close(restored[mask], x[mask])
    torch.testing.assert_close(F.max_pool2d(x, 2, 2, ceil_mode=True), pooled_x)


def test_decoder_mirrors_the_encoder(segnet):
    convs = [m for m in segnet.modules() if isinstance(m, nn.Conv2d)]
    widths = [(c.in_channels, c.out_channels) for c in convs]
    encoder = widths[:13]
    decoder = widths[13:]
    assert len(decoder) == 13
    assert decoder[:-1] == [(o, i) for i, o in reversed(encoder[1:])]  # conv5_3_D .. conv1_2_D
    assert decoder[-1] == (64, 5) and all(c.bias is not None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in segnet.modules()) == 25  # none after conv1_1_D


@pytest.mark.parametrize("size", [(67, 93), (33, 17), (5, 3)])
def test_any_input_size_gives_logits_at_that_size(segnet, size):
    with torch.no_grad():
        assert segnet(torch.randn(1, 3, *size)).shape == (1, 5, *size)


def test_bayesian_segnet_drops_out_after_pool3_pool4_pool5_and_the_central_decoders(bayesian):
    order = []
    hooks = [m.register_forward_hook(lambda m, a, o, n=name: order.append(n)) for name, m in bayesian.named_modules()
             if isinstance(m, (nn.MaxPool2d, nn.MaxUnpool2d, nn.Dropout)) or name.startswith("decoder")
             and name.count(".") == 0]
    try:
        with torch.no_grad():
            bayesian(torch.randn(1, 3, 32, 32))
    finally:
        for hook in hooks:
            hook.remove()
    assert order == [
        "encoder.pool1", "encoder.pool2", "encoder.pool3", "encoder.encdrop3", "encoder.pool4", "encoder.encdrop4",
        "encoder.pool5", "encoder.encdrop5",
        "unpool5", "decoder5", "decdrop5", "unpool4", "decoder4", "decdrop4", "unpool3", "decoder3", "decdrop3",
        "unpool2", "decoder2", "unpool1", "decoder1",
    ]
    assert all(m.p == 0.5 for m in bayesian.modules() if isinstance(m, nn.Dropout))
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(bayesian(x), bayesian(x), rtol=0, atol=0)  # eval: deterministic


def test_segnet_has_no_dropout(segnet):
    assert not any(isinstance(m, nn.Dropout) for m in segnet.modules())
    with pytest.raises(ValueError, match="dropout"):
        bayesian_segnet_vgg16(dropout=0.0)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = SegNet(num_classes=3)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_vgg16_bn_weights_load_into_the_encoder(tmp_path):
    torch.manual_seed(1)
    state = vgg16_bn(weights=None).state_dict()
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    model = segnet_vgg16(num_classes=2, pretrained_backbone=str(path))
    encoder = model.encoder.state_dict()
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    assert len(encoder) == len(features) == 13 * 6 + 13  # conv w/b, BN w/b/mean/var/num_batches_tracked
    for key, value in encoder.items():
        torch.testing.assert_close(value, features[key.split(".", 1)[1]], rtol=0, atol=0)
