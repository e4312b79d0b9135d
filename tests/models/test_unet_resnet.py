"""U-Net with a ResNet encoder (smp's Unet): smp's parameter counts, a torchvision ResNet encoder whose skips
are strides 2-16, nearest 2x upsampling and concatenation in the decoder, any input size (padded to 32 and
cropped back), local backbone weights, training, and ONNX export."""

import numpy as np
import onnxruntime as ort
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34

import seglab
from seglab.errors import CheckpointError
from seglab.export import export_onnx
from seglab.models import count_parameters
from seglab.models.semantic.unet_resnet import UNetResNet, unet_resnet18, unet_resnet34


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_parameter_count_equals_smp_unet(depth):
    with torch.device("meta"):
        ours = seglab.create_model(f"unet_resnet{depth}", num_classes=21)
        reference = smp.Unet(f"resnet{depth}", encoder_weights=None, classes=21)
    assert count_parameters(ours) == count_parameters(reference)
    # smp 0.6.0's counts at 21 classes, measured
    expected = {18: 14_331_109, 34: 24_439_269, 50: 32_524_005}[depth]
    assert count_parameters(ours) == expected
    info = seglab.model_info(f"unet_resnet{depth}")
    assert info.task == "semantic" and info.year == 2015 and info.url == "https://arxiv.org/abs/1505.04597"
    if info.paper_params is not None:
        with torch.device("meta"):
            at_paper = seglab.create_model(f"unet_resnet{depth}", **info.paper_kwargs)
        assert count_parameters(at_paper) == info.paper_params  # 24,438,979 (r34), 32,523,715 (r50) at 19 classes


def test_encoder_is_torchvision_resnet_without_fc():
    model = unet_resnet34(num_classes=3)
    encoder = {k.removeprefix("encoder.") for k in model.state_dict() if k.startswith("encoder.")}
    assert encoder == {k for k in resnet34().state_dict() if not k.startswith("fc.")}
    assert not any(isinstance(m, nn.Linear) for m in model.modules())


def test_decoder_concatenates_skips_and_upsamples_nearest():
    model = unet_resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 64, 96)
    features = list(model.encoder(x).values())
    assert [tuple(f.shape[1:]) for f in features] == [
        (64, 32, 48), (64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)
    ]
    # block input channels: previous decoder width + skip width (skips at strides 16, 8, 4, 2; none last)
    assert [b.conv1[0].in_channels for b in model.decoder] == [512 + 256, 256 + 128, 128 + 64, 64 + 64, 32]
    assert [b.conv2[0].out_channels for b in model.decoder] == [256, 128, 64, 32, 16]
    assert all(b.conv1[0].bias is None and isinstance(b.conv1[1], nn.BatchNorm2d) for b in model.decoder)
    assert model.classifier.kernel_size == (3, 3) and model.classifier.in_channels == 16
    # block 0 by hand: nearest 2x (each pixel repeated 2x2), upsampled first then the skip, two conv-BN-ReLU
    block = model.decoder[0]
    bottom, skip = features[4], features[3]
    up = bottom.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    with torch.no_grad():
        expected = block.conv2(block.conv1(torch.cat([up, skip], dim=1)))
        torch.testing.assert_close(block(bottom, skip), expected, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(64, 64), (70, 90), (33, 17), (1, 1)])
def test_any_input_size_gives_logits_at_that_size(size):
    model = unet_resnet18(num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size) and torch.isfinite(out).all()


def test_odd_size_is_the_zero_padded_multiple_of_32_cropped():
    model = unet_resnet18(num_classes=3).eval()
    x = torch.randn(1, 3, 70, 90)
    padded = F.pad(x, (0, 96 - 90, 0, 96 - 70))  # zeros at the bottom/right, to 96x96
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :70, :90], rtol=0, atol=0)


def test_train_mode_returns_logits_tensor():
    model = unet_resnet18(num_classes=3).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 64, 64)


def test_pretrained_backbone_true_without_network_says_how_to_give_a_file(monkeypatch):
    from torchvision.models import ResNet34_Weights

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(type(ResNet34_Weights.DEFAULT), "get_state_dict", offline)
    with pytest.raises(CheckpointError, match=r'pretrained_backbone="/path/resnet34-[0-9a-f]+\.pth"'):
        unet_resnet34(pretrained_backbone=True)


def test_pretrained_backbone_local_file_loads_into_encoder(tmp_path):
    reference = resnet18()
    with torch.no_grad():
        reference.conv1.weight.normal_()
        reference.layer4[1].bn2.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = unet_resnet18(num_classes=2, pretrained_backbone=str(path))
    torch.testing.assert_close(model.encoder.conv1.weight, reference.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.encoder.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    with pytest.raises(CheckpointError, match="missing.pth"):
        unet_resnet18(pretrained_backbone=str(tmp_path / "missing.pth"))


def test_a_few_optimizer_steps_reduce_the_loss():
    model = unet_resnet18(num_classes=3).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, :, 32:] = 1
    target[:, 40:, :] = 2
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_onnx_export_matches_pytorch_at_two_sizes(tmp_path):
    model = unet_resnet18(num_classes=4).eval()
    path = export_onnx(model, tmp_path / "unet_resnet18.onnx", input_size=(64, 64), metadata={"model": "unet_resnet18"})
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 96), (1, 3, 96, 64), (1, 3, 70, 45)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(["logits"], {"image": x.numpy()})[0]
        assert out.shape == ref.shape == (1, 4, *shape[2:])
        assert np.abs(out - ref).max() <= 1e-4 * max(np.abs(ref).max(), 1.0)


def test_rejects_wrong_channel_lists():
    with pytest.raises(ValueError, match="5 encoder and 5 decoder"):
        UNetResNet(nn.Identity(), (64, 64, 128, 256), num_classes=2)
