"""DeepLabv3's ASPP head on DeepLab v1/v2's dilated VGG16 (output stride 8): a documented design choice."""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg16

from seglab.model_table import count_at_paper_setting
from seglab.models import model_info
from seglab.models.semantic.deeplabv3 import ASPP, deeplabv3_vgg16


def test_parameter_count_is_vgg16_conv_plus_deeplab_head():
    info = model_info("deeplabv3_vgg16")
    assert info.paper == "Rethinking Atrous Convolution for Semantic Image Segmentation"
    assert (info.year, info.input_size, info.paper_kwargs, info.paper_params) == (
        2017,
        (513, 513),
        {"num_classes": 21},
        None,
    )
    assert count_at_paper_setting("deeplabv3_vgg16") == 19_442_261  # 14,714,688 + DeepLabHead(512, 21)


def test_pool4_pool5_stride_1_and_conv5_dilated_2_give_output_stride_8():
    torch.manual_seed(0)
    model = deeplabv3_vgg16(num_classes=3).eval()
    pools = [m for m in model.backbone.modules() if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(2, 2, 0)] * 3 + [(3, 1, 1)] * 2
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert [c.dilation for c in convs] == [(1, 1)] * 10 + [(2, 2)] * 3
    with torch.no_grad():
        assert model.backbone(torch.randn(1, 3, 64, 64))["out"].shape == (1, 512, 8, 8)


def test_aspp_rates_12_24_36_with_image_pooling():
    with torch.device("meta"):
        model = deeplabv3_vgg16()
    aspp = model.classifier[0]
    assert isinstance(aspp, ASPP)
    branches = list(aspp.convs)
    assert branches[0][0].kernel_size == (1, 1)
    assert tuple(b[0].dilation[0] for b in branches[1:4]) == (12, 24, 36)
    assert isinstance(branches[4][0], nn.AdaptiveAvgPool2d)  # image-level pooling
    assert model.classifier[1].kernel_size == (3, 3) and model.classifier[-1].kernel_size == (1, 1)
    assert model.classifier[-1].out_channels == 21 and model.aux_classifier is None


def test_odd_input_gives_logits_at_the_input_size():
    torch.manual_seed(0)
    model = deeplabv3_vgg16().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 67, 93))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 21, 67, 93)


def test_a_few_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = deeplabv3_vgg16(num_classes=3).train()
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_torchvision_vgg16_weights_load_into_the_features(tmp_path):
    torch.manual_seed(1)
    state = vgg16(weights=None).state_dict()
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    model = deeplabv3_vgg16(pretrained_backbone=str(path))
    backbone = model.backbone.state_dict()
    assert len(backbone) == 26  # 13 convs, weight and bias
    for key, value in backbone.items():
        torch.testing.assert_close(value, state[f"features.{key}"], rtol=0, atol=0)
