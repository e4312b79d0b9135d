"""CoinCheung/BiSeNet checkpoints load into seglab's bisenetv1_resnet18 and bisenetv2: a state dict in its layout
(built here by a re-statement of its master's networks, random weights) converts through the function and the
CLI, every tensor lands on its seglab key unchanged, the converted model gives the reference's logits (and aux
logits), the dataset's input normalisation folds into the first convolutions, and foreign, mis-shaped, older or
malicious files are refused naming what is wrong."""

import pickle

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import seglab
from seglab.checkpoint import read_metadata
from seglab.cli import main
from seglab.convert import convert_bisenet, load_bisenet
from seglab.convert.bisenet import BISENET_DATASETS, bisenet_to_seglab_key, seglab_to_bisenet_key
from seglab.convert.smp import seglab_to_smp_key
from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seglab.errors import CheckpointError
from seglab.pretrained import load_model
from tests.payloads import RunsPython, RunsShell

V1, V2 = "bisenetv1_resnet18", "bisenetv2"


# ---------------------------------------------------------------- CoinCheung's networks, in its module names


class _ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _attention(feat, conv, bn):
    return torch.sigmoid(bn(conv(feat.mean(dim=(2, 3), keepdim=True))))


class _ARM(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        return feat * _attention(feat, self.conv_atten, self.bn_atten)


class _V1Output(nn.Module):
    """BiSeNetOutput: 3x3 ConvBNReLU, 1x1 conv to the classes, bilinear upsampling by ``up``."""

    def __init__(self, cin, mid, classes, up):
        super().__init__()
        self.conv = _ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, classes, 1)
        self.up = up

    def forward(self, x):
        return F.interpolate(self.conv_out(self.conv(x)), scale_factor=self.up, mode="bilinear", align_corners=False)


class _ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = torchvision.models.resnet18()  # CoinCheung's Resnet18: torchvision's names, no fc
        del self.resnet.fc
        self.arm16, self.arm32 = _ARM(256, 128), _ARM(512, 128)
        self.conv_head32, self.conv_head16 = _ConvBNReLU(128, 128), _ConvBNReLU(128, 128)
        self.conv_avg = _ConvBNReLU(512, 128, 1)

    def forward(self, x):
        r = self.resnet
        x = r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))
        feat16 = r.layer3(r.layer2(x))
        feat32 = r.layer4(feat16)
        avg = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        up32 = self.conv_head32(F.interpolate(self.arm32(feat32) + avg, scale_factor=2.0, mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(feat16) + up32, scale_factor=2.0, mode="nearest"))
        return up16, up32


class _SpatialPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = _ConvBNReLU(3, 64, 7, 2)
        self.conv2 = _ConvBNReLU(64, 64, 3, 2)
        self.conv3 = _ConvBNReLU(64, 64, 3, 2)
        self.conv_out = _ConvBNReLU(64, 128, 1)

    def forward(self, x):
        return self.conv_out(self.conv3(self.conv2(self.conv1(x))))


class _FFM(nn.Module):
    def __init__(self):
        super().__init__()
        self.convblk = _ConvBNReLU(256, 256, 1)
        self.conv = nn.Conv2d(256, 256, 1, bias=False)
        self.bn = nn.BatchNorm2d(256)

    def forward(self, spatial, context):
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        return feat + feat * _attention(feat, self.conv, self.bn)


class RefBiSeNetV1(nn.Module):
    """``aux=False`` is CoinCheung's ``aux_mode='eval'`` network (no ``conv_out16``/``conv_out32``)."""

    def __init__(self, classes, aux=True):
        super().__init__()
        self.cp, self.sp, self.ffm = _ContextPath(), _SpatialPath(), _FFM()
        self.conv_out = _V1Output(256, 256, classes, 8)
        if aux:
            self.conv_out16 = _V1Output(128, 64, classes, 8)
            self.conv_out32 = _V1Output(128, 64, classes, 16)

    def forward(self, x):
        cp8, cp16 = self.cp(x)
        aux = [self.conv_out16(cp8), self.conv_out32(cp16)] if hasattr(self, "conv_out16") else []
        return self.conv_out(self.ffm(self.sp(x), cp8)), aux


def _bn_conv(cin, cout, k, stride=1, groups=1, relu=False):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU()] if relu else layers


class _GELayer(nn.Module):
    """GELayerS1 (``stride=1``) and GELayerS2 (``stride=2``)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        mid = cin * 6
        self.stride = stride
        self.conv1 = _ConvBNReLU(cin, cin)
        if stride == 1:
            self.dwconv = nn.Sequential(*_bn_conv(cin, mid, 3, groups=cin, relu=True))
        else:
            self.dwconv1 = nn.Sequential(*_bn_conv(cin, mid, 3, 2, groups=cin))
            self.dwconv2 = nn.Sequential(*_bn_conv(mid, mid, 3, groups=mid, relu=True))
            self.shortcut = nn.Sequential(*_bn_conv(cin, cin, 3, 2, groups=cin), *_bn_conv(cin, cout, 1))
        self.conv2 = nn.Sequential(*_bn_conv(mid, cout, 1))

    def forward(self, x):
        feat = self.conv1(x)
        if self.stride == 1:
            return F.relu(self.conv2(self.dwconv(feat)) + x)
        return F.relu(self.conv2(self.dwconv2(self.dwconv1(feat))) + self.shortcut(x))


class _StemBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = _ConvBNReLU(3, 16, 3, 2)
        self.left = nn.Sequential(_ConvBNReLU(16, 8, 1), _ConvBNReLU(8, 16, 3, 2))
        self.fuse = _ConvBNReLU(32, 16)

    def forward(self, x):
        feat = self.conv(x)
        return self.fuse(torch.cat([self.left(feat), F.max_pool2d(feat, 3, 2, 1)], dim=1))


class _CEBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(128)
        self.conv_gap = _ConvBNReLU(128, 128, 1)
        self.conv_last = _ConvBNReLU(128, 128)

    def forward(self, x):
        return self.conv_last(x + self.conv_gap(self.bn(x.mean(dim=(2, 3), keepdim=True))))


class _SegmentBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.S1S2 = _StemBlock()
        self.S3 = nn.Sequential(_GELayer(16, 32, 2), _GELayer(32, 32, 1))
        self.S4 = nn.Sequential(_GELayer(32, 64, 2), _GELayer(64, 64, 1))
        self.S5_4 = nn.Sequential(_GELayer(64, 128, 2), *(_GELayer(128, 128, 1) for _ in range(3)))
        self.S5_5 = _CEBlock()

    def forward(self, x):
        feat2 = self.S1S2(x)
        feat3 = self.S3(feat2)
        feat4 = self.S4(feat3)
        feat5_4 = self.S5_4(feat4)
        return feat2, feat3, feat4, feat5_4, self.S5_5(feat5_4)


class _BGALayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.left1 = nn.Sequential(*_bn_conv(128, 128, 3, groups=128), nn.Conv2d(128, 128, 1, bias=False))
        self.left2 = nn.Sequential(*_bn_conv(128, 128, 3, 2), nn.AvgPool2d(3, 2, 1))
        self.right1 = nn.Sequential(*_bn_conv(128, 128, 3))
        self.right2 = nn.Sequential(*_bn_conv(128, 128, 3, groups=128), nn.Conv2d(128, 128, 1, bias=False))
        self.conv = nn.Sequential(*_bn_conv(128, 128, 3, relu=True))

    def forward(self, detail, semantic):
        right1 = F.interpolate(self.right1(semantic), scale_factor=4.0, mode="nearest")
        left = self.left1(detail) * torch.sigmoid(right1)
        right = F.interpolate(self.left2(detail) * torch.sigmoid(self.right2(semantic)), scale_factor=4.0)
        return self.conv(left + right)


class _SegmentHead(nn.Module):
    def __init__(self, cin, mid, classes, up, aux=True):
        super().__init__()
        self.conv = _ConvBNReLU(cin, mid)
        self.drop = nn.Dropout(0.1)
        booster = nn.Sequential(nn.Upsample(scale_factor=2.0), _ConvBNReLU(mid, up * up)) if aux else nn.Identity()
        self.conv_out = nn.Sequential(
            booster, nn.Conv2d(up * up if aux else mid, classes, 1),
            nn.Upsample(scale_factor=float(up // 2 if aux else up), mode="bilinear", align_corners=False),
        )

    def forward(self, x):
        return self.conv_out(self.drop(self.conv(x)))


class RefBiSeNetV2(nn.Module):
    def __init__(self, classes, aux=True):
        super().__init__()
        stages = [(3, 64, 2), (64, 64, 1), (64, 64, 2), (64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1),
                  (128, 128, 1)]
        blocks = [_ConvBNReLU(cin, cout, 3, s) for cin, cout, s in stages]
        self.detail = nn.Module()
        self.detail.S1, self.detail.S2, self.detail.S3 = (nn.Sequential(*blocks[:2]), nn.Sequential(*blocks[2:5]),
                                                          nn.Sequential(*blocks[5:]))
        self.segment, self.bga = _SegmentBranch(), _BGALayer()
        self.head = _SegmentHead(128, 1024, classes, 8, aux=False)
        if aux:
            for name, cin, up in (("aux2", 16, 4), ("aux3", 32, 8), ("aux4", 64, 16), ("aux5_4", 128, 32)):
                setattr(self, name, _SegmentHead(cin, 128, classes, up))

    def forward(self, x):
        detail = self.detail.S3(self.detail.S2(self.detail.S1(x)))
        feat2, feat3, feat4, feat5_4, semantic = self.segment(x)
        logits = self.head(self.bga(detail, semantic))
        if not hasattr(self, "aux2"):
            return logits, []
        return logits, [self.aux2(feat2), self.aux3(feat3), self.aux4(feat4), self.aux5_4(feat5_4)]


def _reference(model, classes, aux=True):
    """The network with seeded random weights and BatchNorm statistics (so no BN is the identity), eval mode."""
    torch.manual_seed(0)
    net = (RefBiSeNetV1 if model == V1 else RefBiSeNetV2)(classes, aux=aux)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(5)
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def references():
    return {model: _reference(model, 19) for model in (V1, V2)}


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _eval_logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _assert_same_tensors(model, reference_state, name, folded=()):
    """Every tensor of the reference lands on its seglab key unchanged (``folded``: seglab keys rewritten)."""
    own = model.state_dict()
    for key, value in reference_state.items():
        target = bisenet_to_seglab_key(key, name)
        if target not in folded:
            assert torch.equal(own[target], value), (key, target)


# ---------------------------------------------------------------- the key map


def test_key_map_by_hand():
    assert bisenet_to_seglab_key("cp.resnet.layer3.0.downsample.1.running_var", V1) == (
        "context_path.backbone.layer3.0.downsample.1.running_var")
    assert bisenet_to_seglab_key("sp.conv_out.bn.running_mean", V1) == "spatial_path.3.1.running_mean"
    assert bisenet_to_seglab_key("ffm.convblk.conv.weight", V1) == "ffm.fuse.0.weight"
    assert bisenet_to_seglab_key("ffm.conv.weight", V1) == "ffm.conv_atten.weight"
    assert bisenet_to_seglab_key("conv_out.conv_out.bias", V1) == "head.1.bias"
    assert bisenet_to_seglab_key("conv_out32.conv.bn.weight", V1) == "aux_heads.1.0.1.weight"
    assert bisenet_to_seglab_key("detail.S3.2.conv.weight", V2) == "detail_branch.7.0.weight"
    assert bisenet_to_seglab_key("segment.S5_4.0.shortcut.2.weight", V2) == (
        "semantic_branch.stage5.0.shortcut.1.0.weight")
    assert bisenet_to_seglab_key("segment.S3.0.dwconv2.1.bias", V2) == "semantic_branch.stage3.0.dwconv.1.1.bias"
    assert bisenet_to_seglab_key("segment.S4.1.dwconv.0.weight", V2) == "semantic_branch.stage4.1.dwconv.0.weight"
    assert bisenet_to_seglab_key("bga.left1.2.weight", V2) == "aggregation.detail_keep.1.weight"
    assert bisenet_to_seglab_key("head.conv_out.1.weight", V2) == "head.classifier.weight"
    assert bisenet_to_seglab_key("aux5_4.conv_out.0.1.bn.bias", V2) == "aux_heads.3.booster_conv.1.bias"
    assert bisenet_to_seglab_key("cp.extra.weight", V1) == "cp.extra.weight"  # no counterpart: as it is


@pytest.mark.parametrize("name", [V1, V2])
def test_key_map_is_a_bijection_of_the_two_layouts(references, name):
    theirs = set(references[name].state_dict())
    ours = set(seglab.create_model(name, num_classes=19).state_dict())
    assert {bisenet_to_seglab_key(k, name) for k in theirs} == ours
    assert {seglab_to_bisenet_key(k, name) for k in ours} == theirs


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("name", [V1, V2])
def test_converted_model_gives_coincheungs_logits_and_aux_logits(references, name):
    reference = references[name]
    model = load_bisenet(reference.state_dict(), fold_normalization=False)
    _assert_same_tensors(model, reference.state_dict(), name)
    x = torch.randn(2, 3, 64, 96)
    expected, expected_aux = _eval_logits(reference, x)
    got = _eval_logits(model, x)
    assert expected.abs().max() > 0.1  # a real comparison, not two zero maps
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    model.train()  # the dict with aux logits; BN statistics and dropout as in eval
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.Dropout)):
            module.eval()
    with torch.no_grad():
        out = model(x)
    assert len(out["aux"]) == len(expected_aux)
    for aux, want in zip(out["aux"], expected_aux, strict=True):
        torch.testing.assert_close(aux, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", [V1, V2])
def test_folded_normalisation_gives_coincheungs_first_features(references, name):
    """On an ImageNet-normalised image, the folded stem convs + BN give what CoinCheung's give on the same image in
    Cityscapes normalisation, except within the convs' zero padding at the border."""
    reference = references[name]
    model = load_bisenet(reference.state_dict()).eval()
    _, _, mean, std = BISENET_DATASETS["cityscapes"]
    image = torch.rand(1, 3, 64, 96)
    x_imagenet = (image - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x_city = (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    if name == V1:
        r = reference.cp.resnet
        pairs = [(model.spatial_path[0], reference.sp.conv1, 2),
                 (nn.Sequential(model.context_path.backbone.conv1, model.context_path.backbone.bn1),
                  nn.Sequential(r.conv1, r.bn1), 2)]
    else:
        pairs = [(model.detail_branch[0], reference.detail.S1[0], 1),
                 (model.semantic_branch.stem.conv, reference.segment.S1S2.conv, 1)]
    with torch.no_grad():
        for ours, theirs, border in pairs:
            got, want = ours(x_imagenet), theirs(x_city)
            inner = (..., slice(border, -border), slice(border, -border))
            torch.testing.assert_close(got[inner], want[inner], rtol=0, atol=1e-5)
            assert not torch.allclose(got, want, atol=1e-3)  # the border ring does differ
    state = reference.state_dict()
    folded = {"spatial_path.0.0.weight", "spatial_path.0.1.running_mean", "context_path.backbone.conv1.weight",
              "context_path.backbone.bn1.running_mean", "detail_branch.0.0.weight", "detail_branch.0.1.running_mean",
              "semantic_branch.stem.conv.0.weight", "semantic_branch.stem.conv.1.running_mean"}
    _assert_same_tensors(model, state, name, folded=folded)  # nothing else changed


# ---------------------------------------------------------------- files, CLI, metadata


@pytest.mark.parametrize("name", [V1, V2])
@pytest.mark.parametrize("classes,aux", [(19, True), (19, False), (171, True), (171, False)])
def test_released_layouts_convert_through_the_cli_and_the_function(tmp_path, capsys, name, classes, aux):
    reference = _reference(name, classes, aux=aux)
    src = tmp_path / f"model_final_{classes}.pth"
    torch.save(reference.state_dict(), src)  # as CoinCheung saves: torch.save(net.state_dict())
    dst = tmp_path / "out" / "bisenet.safetensors"
    dst.parent.mkdir()
    assert main(["convert", "bisenet", str(src), str(dst)]) == 0
    assert f"(seglab {name})" in capsys.readouterr().out
    dataset, label_set = ("cityscapes", "cityscapes") if classes == 19 else ("coco_stuff", "coco_stuff")
    meta = read_metadata(dst)
    assert meta["model"] == name and meta["num_classes"] == classes and meta["model_kwargs"] == {}
    assert meta["label_set"] == label_set
    assert meta["source"] == f"CoinCheung/BiSeNet checkpoint {src.name}"
    assert meta["aux_heads"] == ("converted" if aux else "not in the checkpoint: initialised (seed 0)")
    assert meta["input_normalization"].startswith(f"imagenet: {dataset}'s mean/std folded")
    model = load_model(dst)  # rebuilt from the metadata alone, loaded strictly
    stem = {"spatial_path.0.0.weight", "spatial_path.0.1.running_mean", "context_path.backbone.conv1.weight",
            "context_path.backbone.bn1.running_mean", "detail_branch.0.0.weight", "detail_branch.0.1.running_mean",
            "semantic_branch.stem.conv.0.weight", "semantic_branch.stem.conv.1.running_mean"}
    _assert_same_tensors(model, reference.state_dict(), name, folded=stem)

    raw = convert_bisenet(src, tmp_path / "raw.safetensors", fold_normalization=False)
    assert read_metadata(raw)["input_normalization"].startswith("CoinCheung's, not folded")
    unfolded = load_model(raw)
    _assert_same_tensors(unfolded, reference.state_dict(), name)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_eval_logits(unfolded, x), _eval_logits(reference, x)[0], rtol=0, atol=1e-5)
    if not aux:  # the aux heads are seglab's seeded initialisation, the same in every conversion
        again = load_bisenet(src, fold_normalization=False).state_dict()
        for key, value in unfolded.state_dict().items():
            assert torch.equal(again[key], value), key


def test_wrapped_and_data_parallel_files_load(references, tmp_path):
    state = references[V2].state_dict()
    for i, wrapped in enumerate(({"state_dict": state, "iter": 3}, {"model": {f"module.{k}": v for k, v in
                                                                               state.items()}})):
        torch.save(wrapped, tmp_path / f"w{i}.pth")
        model = load_bisenet(tmp_path / f"w{i}.pth", fold_normalization=False)
        _assert_same_tensors(model, state, V2)


def test_ade20k_and_other_class_counts(references, tmp_path):
    reference = _reference(V1, 150, aux=False)
    meta = read_metadata(convert_bisenet(reference.state_dict(), tmp_path / "ade.safetensors"))
    assert meta["label_set"] == "ade20k" and meta["num_classes"] == 150
    custom = _reference(V2, 5, aux=False).state_dict()
    with pytest.raises(CheckpointError, match="5 classes, none of CoinCheung's datasets .*--no-fold-normalization"):
        convert_bisenet(custom, tmp_path / "custom.safetensors")
    meta = read_metadata(convert_bisenet(custom, tmp_path / "custom.safetensors", fold_normalization=False,
                                         label_set="voc"))
    assert meta["num_classes"] == 5 and meta["label_set"] == "voc"
    with pytest.raises(CheckpointError, match="head.conv_out.1.weight has 5 classes but dataset 'coco_stuff' has 171"):
        convert_bisenet(custom, tmp_path / "x.safetensors", dataset="coco_stuff")


# ---------------------------------------------------------------- refusals


def _problem(state, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as info:
        load_bisenet(state, **kwargs)
    return str(info.value)


def test_unexpected_missing_and_mis_shaped_keys_are_named_in_coincheungs_terms(references):
    state = _state(references[V1])
    state["cp.extra.weight"] = torch.zeros(3)
    _problem(state, r"unexpected keys: cp\.extra\.weight")
    state = _state(references[V2])
    del state["bga.left2.1.running_mean"]
    _problem(state, r"missing keys: bga\.left2\.1\.running_mean")
    state = _state(references[V1])
    state["ffm.conv.weight"] = torch.zeros(128, 256, 1, 1)
    _problem(state, r"shape mismatch: ffm\.conv\.weight: file \(128, 256, 1, 1\) vs model \(256, 256, 1, 1\)")
    state = _state(references[V2])  # some aux heads but not all: a damaged or foreign file, not an eval-mode one
    del state["aux3.conv_out.1.bias"]
    _problem(state, r"missing keys: aux3\.conv_out\.1\.bias")


def test_a_file_of_another_library_or_model_is_refused(references, tmp_path):
    smp = {seglab_to_smp_key(k): v for k, v in seglab.create_model("unet_resnet18", num_classes=2).state_dict().items()}
    message = _problem(smp, "not a CoinCheung/BiSeNet v1 or v2 state dict")
    assert "encoder.conv1.weight" in message
    message = _problem(references[V2].state_dict(), r"no 'conv_out\.conv_out\.weight', so not a "
                       r"CoinCheung/BiSeNet bisenetv1_resnet18 state dict", model=V1)
    assert "detail.S1.0.conv.weight" in message  # the file's own keys, named
    _problem(references[V1].state_dict(), "one of bisenetv1_resnet18, bisenetv2", model="bisenetv3")
    with pytest.raises(CheckpointError, match=r"name it \*\.safetensors"):
        convert_bisenet(references[V1].state_dict(), tmp_path / "x.pth")


def test_older_pixel_shuffle_layouts_are_refused(references):
    state = _state(references[V2])
    state["head.conv_out.0.weight"] = torch.zeros(19 * 64, 1024, 1, 1)
    state["head.conv_out.0.bias"] = torch.zeros(19 * 64)
    del state["head.conv_out.1.weight"], state["head.conv_out.1.bias"]
    _problem(state, r"head\.conv_out\.0\.weight \(1216, 1024, 1, 1\).*PixelShuffle")
    state = _state(references[V1])
    for root, up in (("conv_out", 8), ("conv_out16", 8), ("conv_out32", 16)):
        state[f"{root}.conv_out.weight"] = torch.zeros(19 * up * up, state[f"{root}.conv_out.weight"].shape[1], 1, 1)
    _problem(state, "older CoinCheung/BiSeNet layout .*PixelShuffle")


def test_cli_reports_errors_and_writes_nothing(references, tmp_path, capsys):
    state = _state(references[V1])
    del state["sp.conv2.bn.weight"]
    torch.save(state, tmp_path / "bad.pth")
    assert main(["convert", "bisenet", str(tmp_path / "bad.pth"), str(tmp_path / "bad.safetensors")]) == 2
    assert "sp.conv2.bn.weight" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
@pytest.mark.parametrize("payload", [RunsShell, RunsPython])
def test_pickle_with_code_is_refused_without_running_it(tmp_path, capsys, how, payload):
    marker = tmp_path / "pwned"
    obj = {"state_dict": {"sp.conv1.conv.weight": torch.zeros(64, 3, 7, 7), "sp.conv1.bn.weight": payload(marker)}}
    path = tmp_path / "model_final_v1_city_new.pth"
    if how == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
    with pytest.raises(CheckpointError, match="model_final_v1_city_new.pth: refused to load"):
        convert_bisenet(path, tmp_path / "out.safetensors")
    assert main(["convert", "bisenet", str(path), str(tmp_path / "out.safetensors")]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
