"""JPPNet and SS-JPPNet: human parsing with pose (LIP).

**JPPNet**: Liang, Gong, Shen, Lin, "Look into Person: Joint Body Parsing & Pose Estimation Network and A New
Benchmark", TPAMI 2018, arXiv 1804.01984 (code Engineering-Course/LIP_JPPNet: ``utils/model.py``,
``LIP_model.py``, ``train_JPPNet-s2.py``, ``evaluate_parsing_JPPNet-s2.py``). Faithful to the code:

- DeepLab-v2 ResNet-101 at output stride 8 (res4 dilated 2, res5 dilated 4);
- ``fc1_human``: the sum of four 3x3 atrous classifiers (rates 6/12/18/24) on res5c; the parsing feature
  res5c -> 3x3 512 -> 3x3 256 (ReLU, biased convs, no BN, as every head layer);
- ``fc1_pose`` on res4b22 (layer3): 3x3 512, 3x3 512, four 3x3 256, 1x1 512 (ReLU), 1x1 joints; its 256-channel
  feature (6th conv) goes on;
- two refinement stages: ``pose_refine(pose, parsing, feature)`` and ``parsing_refine(parsing, pose, feature)``
  remap both maps with 1x1 convs to 128 channels (ReLU), concatenate them with the 256-channel feature, then
  3x3 512, 5x5 256, 7x7 256, 9x9 256, 1x1 256 (ReLU) and a 1x1 to the joints (pose) or a 4-rate atrous sum
  to the classes (parsing); the 9x9 output is the next stage's feature. Order as the code: pose2 =
  fc2_pose(pose1, parsing1), parsing2 = fc2_parsing(parsing1, pose1), parsing3 = fc3_parsing(parsing2, pose2),
  pose3 = fc3_pose(pose2, parsing2);
- shared weights over the input scales 1, 0.75, 0.5 (input resized bilinearly to ``int(H * s)``); each output is
  fused as the mean over scales after resizing to the full-scale output (parsing bilinear, pose nearest);
- evaluation as ``evaluate_parsing_JPPNet-s2.py``: scales 1, 0.75, 1.25, every stage's parsing resized to the
  input and averaged over scales, then the three stages averaged (flip TTA is the Predictor's).

Train mode returns ``{"out": fused stage-3 parsing, "parsing": [...], "pose": [...]}``, both lists ordered
stage 1, 2, 3 x (fused, then each scale), all at 1/8 of their input; the loss is
:class:`seglab.models.parsing.pose.JPPNetLoss`.

Deviations: torchvision's ResNet (stride in the 3x3 conv, not Caffe's 1x1: same parameters) with trainable
BatchNorm (the reference freezes it, ``is_training=False``); pool padding differs (PyTorch floor vs TF SAME), so
output sizes can differ by one at odd inputs. Heads are initialised N(0, 0.01), bias 0, as the reference.

Parameters at the paper setting (ResNet-101, 20 classes, 16 joints, ``sum(p.numel())``): 122,049,120
(backbone 42,500,160 + heads 79,548,960), equal to the reference table's closed-form count of the TF layers.

**SS-JPPNet**: Gong, Liang, Zhang, Shen, Lin, "Look into Person: Self-supervised Structure-sensitive Learning
and A New Benchmark for Human Parsing", CVPR 2017 (code Engineering-Course/LIP_SSL). The released model
(``human/config/attention/train.prototxt``) is Chen et al.'s attention-to-scale (CVPR 2016) on
**DeepLab-LargeFOV VGG16**, not a ResNet-101 as the reference notes say: conv1-conv5 (pool4/pool5 3x3 stride 1,
conv5 dilated 2, output stride 8), fc6 3x3 dilation 12 -> 1024, fc7 1x1 1024 (ReLU, dropout 0.5), fc8 1x1 to
the classes, shared over the input scales 1, 0.75, 0.5 (Caffe ``Interp``: ``(H - 1) * s + 1`` pixels, aligned
corners). fc7 and fc8 of the smaller scales are resized to the full-scale grid; the attention head (3x3 conv on
the concatenated fc7s -> 512, ReLU, dropout 0.5, 1x1 -> one score per scale, softmax over scales) weights the
fc8s, which are summed. Train mode: ``{"out": merged logits, "aux": [each scale's fc8 at its own size]}`` (the
prototxt supervises the 1/2 scale at its own 1/16 labels; it resizes the 3/4 scale to 1/8 first, which here is
left to the loss's label sampling); the loss is :class:`seglab.models.parsing.pose.SSJPPNetLoss`.
``backbone="resnet101"`` or ``"resnet50"`` swaps in DeepLab-v2 ResNet (classifier: the 4-rate atrous sum on
res5, attention on the res5 features). Deviation: torchvision's VGG16 pool1-3 are 2x2 (Caffe DeepLab's are 3x3
pad 1; no parameters). Parameters (VGG16, 20 classes): 34,662,231.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seglab.models.backbones.resnet import resnet_features
from seglab.models.backbones.vgg import dilated_vgg16_features
from seglab.models.layers import ConvBNAct, seg_output
from seglab.registry import register_model

__all__ = ["JPPNet", "SSJPPNet", "jppnet", "ss_jppnet"]

_RESNET_DEPTHS = {"resnet50": 50, "resnet101": 101}
# The refinement convs (in, out, kernel) after the remaps: 3x3 512, 5x5 256, 7x7 256, 9x9 256.
_REFINE_CONVS = ((512, 512, 3), (512, 256, 5), (256, 256, 7), (256, 256, 9))


def _init_head(module: nn.Module) -> None:
    """The reference's initialisation of new layers: weights N(0, 0.01), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


def _floor(value: float | Tensor) -> int | Tensor:
    """``int(value)`` for a size scaled by a float: a Python int in eager mode, a traced integer tensor while
    exporting (so the ONNX graph keeps dynamic input sizes instead of the traced ones)."""
    if isinstance(value, Tensor):
        return torch.floor(value).to(torch.int64)
    return int(value)


class AtrousSum(nn.Module):
    """DeepLab-v2's classifier: the sum of 3x3 convolutions at several atrous rates (``fc1_human``)."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(dim=0)


class PoseNet(nn.Module):
    """``fc1_pose`` on res4b22: returns the joint heatmaps and the 256-channel feature (``pose_conv6``)."""

    def __init__(self, in_channels: int, num_joints: int) -> None:
        super().__init__()
        channels = (in_channels, 512, 512, 256, 256, 256, 256)
        pairs = zip(channels[:-1], channels[1:], strict=True)
        self.features = nn.Sequential(*(ConvBNAct(c_in, c_out, 3, norm=None) for c_in, c_out in pairs))
        self.head = nn.Sequential(
            ConvBNAct(256, 512, 1, norm=None), ConvBNAct(512, num_joints, 1, norm=None, act=None)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.features(x)
        return self.head(feature), feature


class Refine(nn.Module):
    """``pose_refine`` / ``parsing_refine``: remap both maps to 128 channels, concat with the feature, refine.

    ``first`` is the branch's own map (pose for pose_refine), concatenated first as in the reference. The
    output head is a 1x1 conv (pose) or a 4-rate atrous sum (parsing) after the 1x1 256 conv.
    """

    def __init__(self, first_channels: int, second_channels: int, out_head: nn.Module) -> None:
        super().__init__()
        self.first_remap = ConvBNAct(first_channels, 128, 1, norm=None)
        self.second_remap = ConvBNAct(second_channels, 128, 1, norm=None)
        self.convs = nn.Sequential(*(ConvBNAct(c_in, c_out, k, norm=None) for c_in, c_out, k in _REFINE_CONVS))
        self.conv5 = ConvBNAct(256, 256, 1, norm=None)
        self.out = out_head

    def forward(self, first: Tensor, second: Tensor, feature: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([self.first_remap(first), self.second_remap(second), feature], dim=1)
        feature = self.convs(x)
        return self.out(self.conv5(feature)), feature


class JPPNet(nn.Module):
    """JPPNet: parsing and pose branches with two refinement stages over shared-weight input scales."""

    def __init__(
        self,
        backbone: nn.Module,
        res4_channels: int,
        res5_channels: int,
        num_classes: int,
        num_joints: int,
        scales: Sequence[float] = (1.0, 0.75, 0.5),
        eval_scales: Sequence[float] = (1.0, 0.75, 1.25),
    ) -> None:
        super().__init__()
        self.backbone = backbone  # IntermediateLayerGetter: "aux" = res4b22 (layer3), "out" = res5c (layer4)
        self.scales, self.eval_scales = tuple(scales), tuple(eval_scales)
        self.fc1_human = AtrousSum(res5_channels, num_classes)
        self.parsing_feature = nn.Sequential(
            ConvBNAct(res5_channels, 512, 3, norm=None), ConvBNAct(512, 256, 3, norm=None)
        )
        self.fc1_pose = PoseNet(res4_channels, num_joints)
        self.fc2_pose = Refine(num_joints, num_classes, ConvBNAct(256, num_joints, 1, norm=None, act=None))
        self.fc2_parsing = Refine(num_classes, num_joints, AtrousSum(256, num_classes))
        self.fc3_parsing = Refine(num_classes, num_joints, AtrousSum(256, num_classes))
        self.fc3_pose = Refine(num_joints, num_classes, ConvBNAct(256, num_joints, 1, norm=None, act=None))
        for head in (self.fc1_human, self.parsing_feature, self.fc1_pose, self.fc2_pose, self.fc2_parsing,
                     self.fc3_parsing, self.fc3_pose):  # fmt: skip
            _init_head(head)

    def single_scale(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The three stages' parsing logits and pose heatmaps of one input, at 1/8 of it."""
        features = self.backbone(x)
        parsing1 = self.fc1_human(features["out"])
        parsing_fea1 = self.parsing_feature(features["out"])
        pose1, pose_fea1 = self.fc1_pose(features["aux"])
        pose2, pose_fea2 = self.fc2_pose(pose1, parsing1, pose_fea1)
        parsing2, parsing_fea2 = self.fc2_parsing(parsing1, pose1, parsing_fea1)
        parsing3, _ = self.fc3_parsing(parsing2, pose2, parsing_fea2)
        pose3, _ = self.fc3_pose(pose2, parsing2, pose_fea2)
        return [parsing1, parsing2, parsing3], [pose1, pose2, pose3]

    @staticmethod
    def _resized(x: Tensor, scale: float) -> Tensor:
        if scale == 1.0:
            return x
        size = (_floor(x.shape[-2] * scale), _floor(x.shape[-1] * scale))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        if not self.training:
            size = x.shape[-2:]
            stages = [self.single_scale(self._resized(x, s))[0] for s in self.eval_scales]
            up = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for per in stages for p in per]
            return torch.stack(up).mean(dim=0)
        outputs = [self.single_scale(self._resized(x, s)) for s in self.scales]
        parsing_all: list[Tensor] = []
        pose_all: list[Tensor] = []
        for stage in range(3):
            parsings = [out[0][stage] for out in outputs]
            poses = [out[1][stage] for out in outputs]
            size = parsings[0].shape[-2:]
            fused_parsing = torch.stack(
                [p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                 for p in parsings]
            ).mean(dim=0)  # fmt: skip
            fused_pose = torch.stack(
                [p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="nearest") for p in poses]
            ).mean(dim=0)
            parsing_all += [fused_parsing, *parsings]
            pose_all += [fused_pose, *poses]
        out = parsing_all[-(len(self.scales) + 1)]  # the fused stage-3 parsing
        return seg_output(out, training=self.training, parsing=parsing_all, pose=pose_all)


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV's fc6 (3x3, dilation 12, 1024) and fc7 (1x1, 1024), each ReLU and dropout 0.5."""

    def __init__(self, in_channels: int = 512) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, 1024, 3, padding=12, dilation=12)
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(F.relu(self.fc6(x)))
        return self.drop(F.relu(self.fc7(x)))


class AttentionToScale(nn.Module):
    """Chen et al.'s attention head: concatenated features -> 3x3 512 (ReLU, dropout) -> 1x1 -> softmax over scales."""

    def __init__(self, in_channels: int, num_scales: int) -> None:
        super().__init__()
        self.att_conv1 = nn.Conv2d(in_channels, 512, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.att_fc = nn.Conv2d(512, num_scales, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.att_fc(self.drop(F.relu(self.att_conv1(x)))), dim=1)


class SSJPPNet(nn.Module):
    """Attention-to-scale DeepLab (SS-JPPNet's released network): per-scale logits merged by learned weights."""

    def __init__(
        self,
        features: nn.Module,
        classifier: nn.Module,
        feature_channels: int,
        scales: Sequence[float] = (1.0, 0.75, 0.5),
    ) -> None:
        super().__init__()
        self.features = features  # image -> the features the classifier and the attention read
        self.classifier = classifier
        self.scales = tuple(scales)
        self.attention = AttentionToScale(feature_channels * len(self.scales), len(self.scales))
        _init_head(self.classifier)
        _init_head(self.attention)

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        height, width = x.shape[-2:]
        feats, logits = [], []
        for s in self.scales:
            xs = x
            if s != 1.0:  # Caffe Interp: (H - 1) * s + 1 pixels, aligned corners
                size = (_floor((height - 1) * s) + 1, _floor((width - 1) * s) + 1)
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            feat = self.features(xs)
            feats.append(feat)
            logits.append(self.classifier(feat))
        size = logits[0].shape[-2:]

        def to_grid(t: Tensor) -> Tensor:
            return t if t.shape[-2:] == size else F.interpolate(t, size=size, mode="bilinear", align_corners=True)

        attention = self.attention(torch.cat([to_grid(f) for f in feats], dim=1))
        merged = sum(attention[:, i : i + 1] * to_grid(lg) for i, lg in enumerate(logits))
        if not self.training:
            merged = F.interpolate(merged, size=(height, width), mode="bilinear", align_corners=False)
        return seg_output(merged, logits, training=self.training)


def _check_backbone(backbone: str, allowed: Sequence[str]) -> None:
    if backbone not in allowed:
        raise ValueError(f"backbone must be one of {', '.join(allowed)}, got {backbone!r}")


@register_model(
    task="parsing",
    paper="JPPNet (Look into Person, TPAMI 2018)",
    year=2018,
    input_size=(384, 384),
    url="https://arxiv.org/abs/1804.01984",
    paper_kwargs={"num_classes": 20},
    paper_params=122_049_120,  # reference table: 122,049,120, a closed-form count of LIP_JPPNet's TF layers
)
def jppnet(
    *,
    num_classes: int = 20,
    num_joints: int = 16,
    backbone: str = "resnet101",
    pretrained_backbone: bool | str = False,
    scales: Sequence[float] = (1.0, 0.75, 0.5),
    eval_scales: Sequence[float] = (1.0, 0.75, 1.25),
) -> JPPNet:
    """JPPNet on DeepLab-v2 ResNet (``resnet101`` as the paper, or ``resnet50``), output stride 8.

    ``scales`` are the training input scales (the first should be 1: the fused outputs live on its grid);
    ``eval_scales`` those averaged in eval mode (the reference's test script uses 1, 0.75, 1.25).
    """
    _check_backbone(backbone, tuple(_RESNET_DEPTHS))
    return_layers = {"layer4": "out", "layer3": "aux"}  # res5c, res4b22
    body = resnet_features(_RESNET_DEPTHS[backbone], return_layers, pretrained=pretrained_backbone, output_stride=8)
    return JPPNet(body, 1024, 2048, num_classes, num_joints, scales, eval_scales)


@register_model(
    task="parsing",
    paper="SS-JPPNet (Look into Person: Self-supervised Structure-sensitive Learning, CVPR 2017)",
    year=2017,
    input_size=(321, 321),
    url="https://arxiv.org/abs/1703.05446",
    paper_kwargs={"num_classes": 20},
)
def ss_jppnet(
    *,
    num_classes: int = 20,
    backbone: str = "vgg16",
    pretrained_backbone: bool | str = False,
    scales: Sequence[float] = (1.0, 0.75, 0.5),
) -> SSJPPNet:
    """SS-JPPNet's released network: attention-to-scale DeepLab-LargeFOV VGG16 (or DeepLab-v2 ResNet).

    Train it with :class:`seglab.models.parsing.pose.SSJPPNetLoss` (the structure-sensitive loss).
    """
    _check_backbone(backbone, ("vgg16", *_RESNET_DEPTHS))
    if backbone == "vgg16":
        vgg = dilated_vgg16_features(pretrained=pretrained_backbone)
        features: nn.Module = nn.Sequential(_Out(vgg), LargeFOV(512))
        return SSJPPNet(features, nn.Conv2d(1024, num_classes, 1), 1024, scales)
    depth = _RESNET_DEPTHS[backbone]
    body = resnet_features(depth, {"layer4": "out"}, pretrained=pretrained_backbone, output_stride=8)
    return SSJPPNet(_Out(body), AtrousSum(2048, num_classes), 2048, scales)


class _Out(nn.Module):
    """Takes ``"out"`` from an IntermediateLayerGetter's dict."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)["out"]
