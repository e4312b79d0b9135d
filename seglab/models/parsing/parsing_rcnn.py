"""Parsing R-CNN: instance-level human parsing on a Faster R-CNN person detector, with a GCE parsing head.

Paper: Yang, Song, Wang, Jiang, "Parsing R-CNN for Instance-Level Human Analysis", CVPR 2019, arXiv 1811.12596
(reference code: soeaver/Parsing-R-CNN, cfgs/CIHP/e2e_parsing_rcnn_R-50-FPN_3x_ms.yaml).

Built by composition on torchvision's detection parts: :class:`ParsingRCNN` is a torchvision ``FasterRCNN``
(ResNet-50-FPN from :func:`~seglab.models.backbones.fpn.build_fpn_backbone`, 2 classes: background, person)
whose ``roi_heads`` is a :class:`ParsingRoIHeads` (torchvision's ``RoIHeads`` plus ``parsing_roi_pool``,
``parsing_head`` and ``parsing_predictor``), so a torchvision ``fasterrcnn_resnet50_fpn`` checkpoint loads with
only the box predictor (2 classes) and the ``roi_heads.parsing_*`` keys differing.

Faithful to the paper and its reference configuration:

- Proposals separation sampling: parsing RoIs are pooled from P2 only (torchvision's FPN level ``"0"``, stride 4)
  with RoIAlign 32x32, sampling ratio 2; at most 16 positive RoIs per image, drawn at random (``ROI_SIZE_PER_IMG``);
  the positives are the box branch's sampled proposals with IoU >= 0.5 to a person (GT boxes included).
- GCE head (:class:`GCEHead`): ASPP on the RoI feature (image pooling, 1x1 and 3x3 at rates 6/12/18, 256 channels
  each, with ReLU) -> concat 1280 -> 1x1 512 + ReLU -> non-local block (:class:`NonLocal2d`: embedded Gaussian,
  phi/g on a 2x2 max-pooled map, affinities scaled by 1/sqrt(512), 1x1 output conv + GroupNorm(32), residual)
  -> four 3x3 convs of 512 + ReLU. No BN/GN in the convs (the reference's default). Initialisation as the
  reference (Kaiming-normal fan-out for the convs, N(0, 0.01) in the non-local block).
- Output (:class:`ParsingPredictor`): 4x4 deconv stride 2 (32 -> 64) to ``num_classes`` logits, then bilinear x2
  to 128x128. Loss ``loss_parsing``: cross-entropy over the 128x128 RoI targets, weight 2.0.
- Targets (:func:`project_parsing_on_boxes`): each positive RoI's matched person's part map, cropped to the RoI and
  resized to 128x128 by nearest sampling.
- Inference: the detected persons' boxes are the parsing RoIs; per person the 128x128 softmax is pasted into its
  box at the input image's size (bilinear on the probabilities, then argmax; 0 outside the box).
  ``parsing_scores`` are the box scores, as the reference's ``ParsingPostProcessor`` (without its later
  ParsingIoU head). :func:`seglab.engine.people.semantic_from_instances` merges the persons into one part map for
  the mIoU evaluation, as the reference's ``parsing_png`` (persons scoring >= 0.3, higher scores painted last).

Deviations: the target crop samples the part map at the centres of a 128x128 grid over the continuous box
(the reference rounds the box to integers and calls cv2's nearest resize); the crop is done on the part map at the
dataset's resolution, the box being scaled back from the model's resized frame (torchvision's transform resizes
only boxes and masks), so no label is resampled twice. Pixels labelled 255 are ignored by the loss. The paste
samples the probabilities at each pixel centre inside the continuous box (the reference pads the 128x128 map by
one zero pixel, rounds the expanded box and resizes with cv2). The backbone is torchvision's ResNet-50 (the
reference uses a Caffe-style ResNet-50); FrozenBatchNorm2d by default, trainable BatchNorm with
``frozen_bn=False`` (needed to train from scratch; the head, without normalisation, then needs a small learning
rate or the reference's warm-up, factor 0.01 over 500 iterations). Training scales: pass
``min_size=(512, 640, 704, 768, 800, 864), max_size=1400`` for the reference's multi-scale training (torchvision
then tests at the last ``min_size``).

Parameters at 20 parsing classes (``sum(p.numel())``): 54,511,597 = torchvision's ``fasterrcnn_resnet50_fpn``
(FrozenBN, 41,755,286 at 91 classes; 41,299,161 with the 2-class box predictor) + the GCE head 13,048,576 +
the deconv predictor 163,860; 54,564,717 with ``frozen_bn=False`` (+53,120 BN affine parameters). The reference
publishes no count.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection import FasterRCNN
from torchvision.ops import MultiScaleRoIAlign

from seglab.errors import DatasetError
from seglab.models.backbones.fpn import build_fpn_backbone
from seglab.models.layers import ConvBNAct
from seglab.models.roi_heads import BoxBranchRoIHeads, Detections, Sampled
from seglab.registry import register_model

__all__ = [
    "GCEHead",
    "NonLocal2d",
    "ParsingPredictor",
    "ParsingRCNN",
    "ParsingRoIHeads",
    "parsing_rcnn_resnet50_fpn",
    "paste_parsing_in_image",
    "project_parsing_on_boxes",
]


def _make_conv(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> ConvBNAct:
    """Conv (with bias, no norm) + ReLU, initialised as the reference's ``make_conv`` (Kaiming-normal fan-out)."""
    block = ConvBNAct(in_channels, out_channels, kernel_size, dilation=dilation, norm=None)
    nn.init.kaiming_normal_(block[0].weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(block[0].bias)
    return block


class NonLocal2d(nn.Module):
    """Non-local block, embedded Gaussian (Wang et al. 2018), as the Parsing R-CNN reference's ``NonLocal2d``.

    y = x + GN(W_out (softmax(theta(x)^T phi(pool(x)) / sqrt(C_inner)) g(pool(x)))), pool = 2x2 max-pool.
    """

    def __init__(self, channels: int, inner_channels: int | None = None, pool_stride: int = 2) -> None:
        super().__init__()
        inner_channels = inner_channels or channels
        self.inner_channels = inner_channels
        self.theta = nn.Conv2d(channels, inner_channels, 1)
        self.pool = nn.MaxPool2d(pool_stride, pool_stride)
        self.phi = nn.Conv2d(channels, inner_channels, 1)
        self.g = nn.Conv2d(channels, inner_channels, 1)
        self.out = nn.Conv2d(inner_channels, channels, 1)
        self.gn = nn.GroupNorm(32, channels)
        for conv in (self.theta, self.phi, self.g, self.out):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [N, HW, C']
        pooled = self.pool(x)
        phi = self.phi(pooled).flatten(2)  # [N, C', hw]
        g = self.g(pooled).flatten(2)  # [N, C', hw]
        affinity = torch.softmax(torch.bmm(theta, phi) * self.inner_channels**-0.5, dim=-1)  # [N, HW, hw]
        t = torch.bmm(g, affinity.transpose(1, 2)).reshape(n, self.inner_channels, h, w)
        return x + self.gn(self.out(t))


class GCEHead(nn.Module):
    """Geometric and context encoding: ASPP (image pooling, 1x1, 3x3 at 6/12/18) -> 1x1 -> non-local -> 4 convs.

    RoI feature [R, in_channels, S, S] -> [R, conv_channels, S, S].
    """

    def __init__(
        self, in_channels: int = 256, aspp_channels: int = 256, conv_channels: int = 512,
        dilations: tuple[int, ...] = (6, 12, 18), num_convs: int = 4, use_nonlocal: bool = True,
    ) -> None:
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _make_conv(in_channels, aspp_channels, 1))
        self.aspp = nn.ModuleList(
            [_make_conv(in_channels, aspp_channels, 1)]
            + [_make_conv(in_channels, aspp_channels, 3, dilation=d) for d in dilations]
        )
        self.project = _make_conv((len(dilations) + 2) * aspp_channels, conv_channels, 1)
        self.nonlocal_block = NonLocal2d(conv_channels) if use_nonlocal else nn.Identity()
        self.convs = nn.Sequential(*[_make_conv(conv_channels, conv_channels, 3) for _ in range(num_convs)])
        self.out_channels = conv_channels

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])  # bilinear up from 1x1 = a constant map
        x = torch.cat([pooled, *(branch(x) for branch in self.aspp)], dim=1)
        return self.convs(self.nonlocal_block(self.project(x)))


class ParsingPredictor(nn.Module):
    """4x4 deconv stride 2 to ``num_classes`` logits (32 -> 64), then bilinear x``up_scale`` (64 -> 128)."""

    def __init__(self, in_channels: int, num_classes: int, up_scale: int = 2) -> None:
        super().__init__()
        self.parsing_score_lowres = nn.ConvTranspose2d(in_channels, num_classes, 4, stride=2, padding=1)
        nn.init.kaiming_normal_(self.parsing_score_lowres.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.parsing_score_lowres.bias)
        self.up_scale = up_scale

    def forward(self, x: Tensor) -> Tensor:
        x = self.parsing_score_lowres(x)
        if self.up_scale > 1:
            x = F.interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)
        return x


def project_parsing_on_boxes(parsing: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """Crop each box's matched part map and resize it to ``size`` x ``size`` by nearest sampling: Int64[N, size, size].

    ``parsing`` [G, H, W] integer part labels (one map per person), ``boxes`` [N, 4] x1y1x2y2 in ``parsing``'s
    pixels, ``matched_idxs`` [N] indices into ``parsing``. Output cell (i, j) takes the label of the pixel under
    the point (x1 + (j + 0.5) w / size, y1 + (i + 0.5) h / size), clamped into the map.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, size, size, dtype=torch.int64, device=parsing.device)
    height, width = parsing.shape[-2:]
    boxes = boxes.to(torch.float32)
    steps = (torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5) / size
    xs = boxes[:, 0:1] + steps[None] * (boxes[:, 2:3] - boxes[:, 0:1])  # [N, size]
    ys = boxes[:, 1:2] + steps[None] * (boxes[:, 3:4] - boxes[:, 1:2])
    ix = xs.floor().long().clamp(0, width - 1).to(parsing.device)
    iy = ys.floor().long().clamp(0, height - 1).to(parsing.device)
    g = matched_idxs.long().to(parsing.device)
    return parsing[g[:, None, None], iy[:, :, None], ix[:, None, :]].to(torch.int64)


def paste_parsing_in_image(probs: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Paste per-person part probabilities into the image: Int64[N, H, W] labels, 0 outside each box.

    ``probs`` [N, C, M, M] (softmax over the C parts), ``boxes`` [N, 4] x1y1x2y2 in image pixels. Each pixel whose
    centre lies inside the box samples the M x M map bilinearly (half-pixel centres, border clamped), then takes
    the argmax over the parts.
    """
    height, width = image_size
    out = torch.zeros(probs.shape[0], height, width, dtype=torch.int64, device=probs.device)
    for k in range(probs.shape[0]):
        x1, y1, x2, y2 = boxes[k].tolist()
        # Pixels with centre (x + 0.5) in [x1, x2]: x in [ceil(x1 - 0.5), floor(x2 - 0.5)].
        col0, col1 = max(math.ceil(x1 - 0.5), 0), min(math.floor(x2 - 0.5), width - 1)
        row0, row1 = max(math.ceil(y1 - 0.5), 0), min(math.floor(y2 - 0.5), height - 1)
        if col1 < col0 or row1 < row0:
            continue
        # grid_sample with align_corners=False maps -1/+1 to the outer edges of the map, i.e. the box's edges.
        gx = (torch.arange(col0, col1 + 1, device=probs.device, dtype=probs.dtype) + 0.5 - x1) / max(x2 - x1, 1e-6)
        gy = (torch.arange(row0, row1 + 1, device=probs.device, dtype=probs.dtype) + 0.5 - y1) / max(y2 - y1, 1e-6)
        grid = torch.stack(torch.meshgrid(gy * 2 - 1, gx * 2 - 1, indexing="ij")[::-1], dim=-1)
        sampled = F.grid_sample(probs[k : k + 1], grid[None], mode="bilinear", padding_mode="border",
                                align_corners=False)
        out[k, row0 : row1 + 1, col0 : col1 + 1] = sampled[0].argmax(0)
    return out


class ParsingRoIHeads(BoxBranchRoIHeads):
    """torchvision's ``RoIHeads`` (boxes) with a parsing branch: ``parsing_roi_pool``, ``parsing_head``,
    ``parsing_predictor``. Train: adds ``loss_parsing`` over at most ``parsing_rois_per_image`` random positives
    (None or negative: all); eval: adds ``parsing_probs`` [N, C, M, M] per image."""

    def __init__(
        self, *args: Any, parsing_roi_pool: nn.Module, parsing_head: nn.Module, parsing_predictor: nn.Module,
        parsing_rois_per_image: int | None = 16, parsing_loss_weight: float = 2.0, parsing_resolution: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.parsing_roi_pool = parsing_roi_pool
        self.parsing_head = parsing_head
        self.parsing_predictor = parsing_predictor
        self.parsing_rois_per_image = parsing_rois_per_image
        self.parsing_loss_weight = parsing_loss_weight
        self.parsing_resolution = parsing_resolution

    def check_targets(self, targets: list[dict[str, Tensor]] | None) -> None:
        """torchvision's checks, and a ``parsing`` entry in each target."""
        super().check_targets(targets)
        for i, t in enumerate(targets):
            if "parsing" not in t:
                raise DatasetError(
                    f"targets[{i}]: no 'parsing' entry; Parsing R-CNN needs Int64[N, H, W] part labels per "
                    f"person (0 outside the person), as the CIHP instance dataset gives"
                )

    def parsing_logits(self, features: dict[str, Tensor], boxes: list[Tensor],
                       image_shapes: list[tuple[int, int]]) -> Tensor:
        """Parsing logits [R, C, M, M] of the RoIs ``boxes`` (one tensor of x1y1x2y2 per image)."""
        return self.parsing_predictor(self.parsing_head(self.parsing_roi_pool(features, boxes, image_shapes)))

    def _sample_parsing_rois(self, sampled: Sampled) -> tuple[list[Tensor], list[Tensor]]:
        rois, idxs = [], []
        for p, lab, m in zip(sampled.proposals, sampled.labels, sampled.matched_idxs, strict=True):
            positive = torch.where(lab > 0)[0]
            limit = self.parsing_rois_per_image
            if limit is not None and 0 <= limit < positive.numel():
                positive = positive[torch.randperm(positive.numel(), device=positive.device)[:limit]]
            rois.append(p[positive])
            idxs.append(m[positive])
        return rois, idxs

    def branch_losses(
        self, features: dict[str, Tensor], image_shapes: list[tuple[int, int]], sampled: Sampled,
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """``loss_parsing`` on at most ``parsing_rois_per_image`` random positives per image."""
        rois, roi_matched = self._sample_parsing_rois(sampled)
        logits = self.parsing_logits(features, rois, image_shapes)
        with torch.no_grad():
            parsing_targets = []
            for t, r, m, (h, w) in zip(targets, rois, roi_matched, image_shapes, strict=True):
                gt = t["parsing"]
                # Boxes live in the resized frame; the part maps keep the dataset's resolution.
                scale = r.new_tensor([gt.shape[-1] / w, gt.shape[-2] / h] * 2)
                parsing_targets.append(project_parsing_on_boxes(gt, r * scale, m, logits.shape[-1]))
            parsing_targets = torch.cat(parsing_targets)
        if parsing_targets.numel() == 0:
            loss_parsing = logits.sum() * 0
        else:
            loss_parsing = F.cross_entropy(logits, parsing_targets, ignore_index=255) * self.parsing_loss_weight
        return {"loss_parsing": loss_parsing}

    def branch_outputs(
        self, features: dict[str, Tensor], image_shapes: list[tuple[int, int]], detections: Detections
    ) -> list[dict[str, Tensor]]:
        """Per image the detected persons' ``parsing_probs`` [N, C, M, M] (softmax over the parts)."""
        probs = self.parsing_logits(features, detections.boxes, image_shapes).softmax(dim=1)
        return [{"parsing_probs": p} for p in probs.split([len(b) for b in detections.boxes])]


class ParsingRCNN(FasterRCNN):
    """torchvision's ``FasterRCNN`` person detector whose ``roi_heads`` also parses each person.

    Takes FasterRCNN's arguments (``num_classes`` there is the detector's, 2 by default); ``num_parsing`` is the
    number of part labels. Train targets: ``dict(boxes, labels, parsing=Int64[N, H, W])`` (``masks`` optional),
    the part maps at the input image's size. Eval outputs per image: ``boxes, labels, scores`` and
    ``parsing`` Int64[N, H, W] (part labels pasted at the input size, 0 outside each person's box),
    ``parsing_scores`` Float[N].
    """

    def __init__(
        self, backbone: nn.Module, num_parsing: int = 20, num_classes: int = 2, *,
        parsing_roi_pool: nn.Module | None = None, parsing_head: nn.Module | None = None,
        parsing_predictor: nn.Module | None = None, parsing_rois_per_image: int | None = 16,
        parsing_loss_weight: float = 2.0, **kwargs: Any,
    ) -> None:
        super().__init__(backbone, num_classes=num_classes, **kwargs)
        if parsing_roi_pool is None:
            parsing_roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=32, sampling_ratio=2)
        if parsing_head is None:
            parsing_head = GCEHead(backbone.out_channels)
        if parsing_predictor is None:
            parsing_predictor = ParsingPredictor(parsing_head.out_channels, num_parsing)
        self.roi_heads = ParsingRoIHeads.from_roi_heads(
            self.roi_heads, parsing_roi_pool=parsing_roi_pool, parsing_head=parsing_head,
            parsing_predictor=parsing_predictor, parsing_rois_per_image=parsing_rois_per_image,
            parsing_loss_weight=parsing_loss_weight,
        )

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """torchvision's detection forward; in eval, pastes each person's parsing at its image's input size."""
        sizes = [tuple(img.shape[-2:]) for img in images]
        outputs = super().forward(images, targets)
        if self.training:
            return outputs
        for det, size in zip(outputs, sizes, strict=True):
            det["parsing"] = paste_parsing_in_image(det.pop("parsing_probs"), det["boxes"], size)
            det["parsing_scores"] = det["scores"].clone()
        return outputs


@register_model(
    task="parsing",
    paper="Parsing R-CNN",
    year=2019,
    input_size=(800, 1333),
    url="https://arxiv.org/abs/1811.12596",
    paper_kwargs={"num_classes": 20},
    detector=True,
    people=True,
)
def parsing_rcnn_resnet50_fpn(
    *, num_classes: int = 20, pretrained_backbone: bool | str = False, trainable_backbone_layers: int = 3,
    frozen_bn: bool = True, **kwargs: Any,
) -> ParsingRCNN:
    """Parsing R-CNN on ResNet-50-FPN: a person detector plus the GCE parsing head (``num_classes`` part labels).

    ``kwargs`` go to :class:`ParsingRCNN` / torchvision's ``FasterRCNN`` (``min_size``, ``max_size``,
    ``box_score_thresh``, ``parsing_rois_per_image``, ...). Images are 0-1 RGB, normalised inside. 54,511,597
    parameters at 20 classes (54,564,717 with ``frozen_bn=False``).
    """
    backbone, _ = build_fpn_backbone(
        "resnet50", pretrained_backbone=pretrained_backbone, trainable_layers=trainable_backbone_layers,
        frozen_bn=frozen_bn,
    )
    return ParsingRCNN(backbone, num_parsing=num_classes, **kwargs)
