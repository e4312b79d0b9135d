"""PGN: Part Grouping Network, and its grouping of the parsing and edge maps into person and part instances.

Paper: Gong, Liang, Li, Chen, Yang, Lin, "Instance-level Human Parsing via Part Grouping Network", ECCV 2018
(oral), arXiv 1808.00157. Reference code: Engineering-Course/CIHP_PGN (TensorFlow; utils/model_pgn.py,
train_pgn.py, test_pgn.py, instance_tool/*.m, datasets/CIHP/tool/write_edge.m).

Faithful to the reference:

- ResNet at output stride 8: layer3 (res4) dilated 2 and layer4 (res5) dilated 4, including their first block
  (DeepLab-v2, as the reference; torchvision would give those first blocks rates 1 and 2).
- Parsing branch: 3x3 conv (512, ReLU) on each of layer2/3/4 (res3b3, res4b22, res5c), concat, 3x3 conv 512,
  pyramid pooling, concat with its input, 3x3 conv 512 (``parsing_pp_conv``), dropout 0.1, 3x3 conv to C.
- Instance-edge branch: the same with 256-channel branches (its pyramid pooling still outputs 512 per level),
  to 1 channel, plus deep supervision on each branch feature: a sum of five 3x3 convs to 1 channel at rates
  1/2/4/8/16 (``fc1_edge_res3/4/5``).
- Mutual refinement: ``parsing_fea`` = 3x3 conv 256 on ``parsing_pp_conv``, ``parsing_remap`` = 1x1 conv 128 on
  the first-stage parsing logits (likewise ``edge_fea``, ``edge_remap``); the refined parsing takes
  concat(parsing_fea, parsing_remap, edge_fea, edge_remap) through 3x3 conv 512, pyramid pooling, 3x3 conv 512,
  dropout and 3x3 to C; the refined edge takes concat(edge_fea, edge_remap, parsing_fea, parsing_remap) the
  same way to 1 channel. Every head conv has a bias and a ReLU (no BN in the heads), weights N(0, 0.01).
- Loss (:class:`PGNLoss`) and edge ground truth (:func:`instance_edges`), grouping (:func:`group_instances`):
  see their docstrings.

Deviations:

- Pyramid pooling: the reference average-pools with kernel = stride = 60/30/20/10 pixels of the 1/8 map, sized
  for a 480x480 input (60x60 map: 1, 2, 3, 6 bins). Here the kernel is that fraction of the map (1, 1/2, 1/3,
  1/6, rounded up, per axis), so the bins stay 1/2/3/6 at any input size; at the reference's 512 training size
  (64x64 map) the reference gets 2/3/4/7 bins. Partial windows average over their valid pixels only.
- torchvision's ResNet (stride in the 3x3 conv, trainable BN); the reference freezes BN (``is_training=False``).
- Eval ``forward`` returns the refined parsing logits; the reference's test averages both stages' logits, as
  :meth:`PGN.predict_instances` does. No multi-scale or flip testing inside the model.
- ``width`` scales every head width (512 in the paper: parsing 512, edge branches 256, remaps 128) for CPU
  variants; ``pgn_resnet50`` uses width 256 on ResNet-50.

Parameters at 20 classes: pgn_resnet101 164,839,673 (backbone without fc 42,500,160 + heads 122,339,513),
which equals the reference table's analytic count from the TF code (164,839,673, [M]); pgn_resnet50 at width
256: 60,347,577 (backbone 23,508,032).
"""

from __future__ import annotations

import heapq

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models._utils import IntermediateLayerGetter

from seglab.models.backbones.resnet import resnet_features
from seglab.models.layers import ConvBNAct, seg_output
from seglab.registry import register_model

__all__ = [
    "PGN",
    "PGNLoss",
    "PyramidPooling",
    "group_instances",
    "instance_edges",
    "pgn_resnet50",
    "pgn_resnet101",
]

# The reference's pooling kernels (pixels of the 1/8 map) and the map size they were chosen for (480 / 8).
PYRAMID_KERNELS = (60, 30, 20, 10)
PYRAMID_REFERENCE_SIZE = 60
EDGE_SUPERVISION_RATES = (1, 2, 4, 8, 16)


class PyramidPooling(nn.Module):
    """PGN's pyramid pooling: per level, average pool (kernel = stride = a fraction of the map), 3x3 conv +
    ReLU, bilinear upsampling; the output is the input concatenated with every level."""

    def __init__(self, in_channels: int, out_channels: int, kernels: tuple[int, ...] = PYRAMID_KERNELS) -> None:
        super().__init__()
        self.kernels = tuple(kernels)
        self.convs = nn.ModuleList(ConvBNAct(in_channels, out_channels, norm=None) for _ in self.kernels)
        self.out_channels = in_channels + len(self.kernels) * out_channels

    def kernel_size(self, height: int, width: int, level: int) -> tuple[int, int]:
        """Pooling kernel of ``level`` on a ``height x width`` map: the reference's fraction of a 60-pixel map."""
        k = self.kernels[level]
        return -(-height * k // PYRAMID_REFERENCE_SIZE), -(-width * k // PYRAMID_REFERENCE_SIZE)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        levels = [x]
        for level, conv in enumerate(self.convs):
            pooled = window_avg_pool2d(x, self.kernels[level], PYRAMID_REFERENCE_SIZE)
            levels.append(F.interpolate(conv(pooled), size=size, mode="bilinear", align_corners=False))
        return torch.cat(levels, 1)


def _window_pool_matrix(size: int | Tensor, kernel: int | Tensor, like: Tensor) -> Tensor:
    """``[ceil(size / kernel), size]`` matrix averaging windows ``[i * kernel, min((i + 1) * kernel, size))``."""
    positions = torch.arange(size, device=like.device)
    start = torch.arange((size + kernel - 1) // kernel, device=like.device) * kernel
    end = torch.clamp(start + kernel, max=size)
    inside = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def window_avg_pool2d(x: Tensor, kernel: int, reference: int) -> Tensor:
    """Average pooling with kernel = stride = ``ceil(side * kernel / reference)`` per axis, ceil mode, partial
    windows averaged over their own pixels: ``F.avg_pool2d(x, k, k, ceil_mode=True, count_include_pad=False)``.

    Written as two products with averaging matrices whose windows are computed from ``x``'s (possibly traced) size,
    so the ONNX graph keeps dynamic height and width (``avg_pool2d`` would bake the traced kernel in).
    """
    height, width = x.shape[-2], x.shape[-1]
    k_h = (height * kernel + reference - 1) // reference  # ints in eager mode, traced sizes under export
    k_w = (width * kernel + reference - 1) // reference
    pool_h, pool_w = _window_pool_matrix(height, k_h, x), _window_pool_matrix(width, k_w, x)
    return pool_h @ x @ pool_w.transpose(0, 1)


class _PoolingHead(nn.Module):
    """Pyramid pooling -> 3x3 conv + ReLU (the ``*_pp_conv`` feature) -> dropout -> 3x3 conv (``*_fc``)."""

    def __init__(self, in_channels: int, width: int, out_channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.pp = PyramidPooling(in_channels, width)
        self.pp_conv = ConvBNAct(self.pp.out_channels, width, norm=None)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.pp_conv(self.pp(x))
        return feature, self.fc(self.dropout(feature))


class _Branch(nn.Module):
    """3x3 conv + ReLU on each backbone level, concatenated, then a 3x3 conv + ReLU (``*_branch``)."""

    def __init__(self, in_channels: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList(ConvBNAct(c, width, norm=None) for c in in_channels)
        self.fuse = ConvBNAct(len(in_channels) * width, width, norm=None)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        per_level = [conv(f) for conv, f in zip(self.levels, features, strict=True)]
        return self.fuse(torch.cat(per_level, 1)), per_level


class _EdgeSupervision(nn.Module):
    """Deep supervision of one edge-branch level: the sum of 3x3 convs to 1 channel at rates 1/2/4/8/16."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, 1, 3, padding=r, dilation=r) for r in EDGE_SUPERVISION_RATES)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([conv(x) for conv in self.convs]).sum(0)


class PGN(nn.Module):
    """Part Grouping Network: parsing and instance-edge branches on three backbone levels, mutually refined.

    ``backbone`` returns an ordered dict of three feature maps at the same stride (layer2/3/4 of a dilated
    ResNet). Eval: ``forward(x) -> refined parsing logits [B, C, H, W]``. Train: ``{"out": refined parsing,
    "aux": [first-stage parsing], "edge": refined edge logits [B, 1, h, w], "edge_aux": [first-stage edge,
    deep supervision on layer2, layer3, layer4]}``, all at the backbone's 1/8 resolution.
    """

    def __init__(
        self, backbone: nn.Module, in_channels: tuple[int, int, int], num_classes: int = 20, width: int = 512
    ) -> None:
        super().__init__()
        self.backbone = backbone
        half, quarter = width // 2, width // 4
        self.parsing_branch = _Branch(in_channels, width)
        self.parsing_head = _PoolingHead(width, width, num_classes)
        self.edge_branch = _Branch(in_channels, half)
        self.edge_head = _PoolingHead(half, width, 1)
        self.edge_supervision = nn.ModuleList(_EdgeSupervision(half) for _ in in_channels)
        self.parsing_fea = ConvBNAct(width, half, norm=None)
        self.parsing_remap = ConvBNAct(num_classes, quarter, 1, norm=None)
        self.edge_fea = ConvBNAct(width, half, norm=None)
        self.edge_remap = ConvBNAct(1, quarter, 1, norm=None)
        self.parsing_rf = ConvBNAct(2 * (half + quarter), width, norm=None)
        self.parsing_rf_head = _PoolingHead(width, width, num_classes)
        self.edge_rf = ConvBNAct(2 * (half + quarter), width, norm=None)
        self.edge_rf_head = _PoolingHead(width, width, 1)
        heads = [m for name, m in self.named_children() if name != "backbone"]
        for module in heads:
            for conv in module.modules():
                if isinstance(conv, nn.Conv2d):
                    nn.init.normal_(conv.weight, std=0.01)
                    nn.init.zeros_(conv.bias)

    def _outputs(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        features = list(self.backbone(x).values())
        parsing_branch, _ = self.parsing_branch(features)
        parsing_pp, parsing1 = self.parsing_head(parsing_branch)
        edge_branch, edge_levels = self.edge_branch(features)
        edge_pp, edge1 = self.edge_head(edge_branch)
        supervision = [head(level) for head, level in zip(self.edge_supervision, edge_levels, strict=True)]
        parsing_fea, parsing_remap = self.parsing_fea(parsing_pp), self.parsing_remap(parsing1)
        edge_fea, edge_remap = self.edge_fea(edge_pp), self.edge_remap(edge1)
        parsing_rf = self.parsing_rf(torch.cat([parsing_fea, parsing_remap, edge_fea, edge_remap], 1))
        edge_rf = self.edge_rf(torch.cat([edge_fea, edge_remap, parsing_fea, parsing_remap], 1))
        parsing2, edge2 = self.parsing_rf_head(parsing_rf)[1], self.edge_rf_head(edge_rf)[1]
        return {"out": parsing2, "aux": [parsing1], "edge": edge2, "edge_aux": [edge1, *supervision]}

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        outputs = self._outputs(x)
        out = outputs["out"]
        if not self.training:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return seg_output(
            out, outputs["aux"], training=self.training, edge=outputs["edge"], edge_aux=outputs["edge_aux"]
        )

    @torch.no_grad()
    def predict_edges(self, x: Tensor) -> Tensor:
        """Instance-edge probabilities ``[B, 1, H, W]`` (sigmoid of the refined edge), in eval mode."""
        edge = self._outputs(x)["edge"]
        return torch.sigmoid(F.interpolate(edge, size=x.shape[-2:], mode="bilinear", align_corners=False))

    @torch.no_grad()
    def predict_instances(self, images: Tensor, *, edge_threshold: float = 0.2, min_area: int = 30) -> list[dict]:
        """Semantic parsing, human instances and part instances per image (see :func:`group_instances`).

        As the reference's test, the parsing is the mean of both stages' logits and the edge map the refined
        edge; the model is run in eval mode (its mode is restored afterwards).
        """
        was_training = self.training
        self.eval()
        try:
            outputs = self._outputs(images)
        finally:
            self.train(was_training)
        size = images.shape[-2:]
        logits = (outputs["out"] + outputs["aux"][0]) / 2
        probs = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)
        edges = torch.sigmoid(F.interpolate(outputs["edge"], size=size, mode="bilinear", align_corners=False))
        return [
            group_instances(p.float().cpu().numpy(), e[0].float().cpu().numpy(), edge_threshold=edge_threshold,
                            min_area=min_area)
            for p, e in zip(probs, edges, strict=True)
        ]


def _pgn_backbone(depth: int, pretrained_backbone: bool | str) -> IntermediateLayerGetter:
    """torchvision ResNet-``depth`` at output stride 8 with DeepLab-v2 rates (every layer3 block 2, layer4 4),
    returning layer2, layer3 and layer4."""
    return_layers = {"layer2": "res3", "layer3": "res4", "layer4": "res5"}
    return resnet_features(
        depth, return_layers, pretrained=pretrained_backbone, output_stride=8, dilate_first_block=True
    )


_PAPER = {
    "task": "parsing",
    "paper": "PGN (Instance-level Human Parsing via Part Grouping Network)",
    "year": 2018,
    "input_size": (512, 512),
    "url": "https://arxiv.org/abs/1808.00157",
    "paper_kwargs": {"num_classes": 20},
}


@register_model(**_PAPER, paper_params=164_839_673, people=True)
def pgn_resnet101(*, num_classes: int = 20, pretrained_backbone: bool | str = False, width: int = 512) -> PGN:
    """PGN on a dilated ResNet-101 (the paper's model at ``width=512``)."""
    return PGN(_pgn_backbone(101, pretrained_backbone), (512, 1024, 2048), num_classes, width)


@register_model(**_PAPER, people=True)
def pgn_resnet50(*, num_classes: int = 20, pretrained_backbone: bool | str = False, width: int = 256) -> PGN:
    """A lighter PGN: dilated ResNet-50 and half-width heads (``width=256``); not a model of the paper."""
    return PGN(_pgn_backbone(50, pretrained_backbone), (512, 1024, 2048), num_classes, width)


def _gradient_nonzero(maps: Tensor) -> Tensor:
    """``imgradient(map) > 0`` of MATLAB: Sobel x/y with replicated borders, nonzero in either, on ``[B, H, W]``."""
    x = F.pad(maps.to(torch.float64).unsqueeze(1), (1, 1, 1, 1), mode="replicate")
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    gx = F.conv2d(x, sobel_x.view(1, 1, 3, 3))
    gy = F.conv2d(x, sobel_x.t().contiguous().view(1, 1, 3, 3))
    return ((gx != 0) | (gy != 0)).squeeze(1)


def instance_edges(human_ids: Tensor) -> Tensor:
    """PGN's instance-edge ground truth, ``imgradient(Human_ids) > 0`` (write_edge.m): 1 where the Sobel gradient
    of the person-id map is nonzero (a pixel near one whose id differs, background and other persons alike),
    as int64 ``{0, 1}`` of the input's shape (``[B, H, W]`` or ``[H, W]``)."""
    if human_ids.ndim not in (2, 3):
        raise ValueError(f"human_ids must be [H, W] or [B, H, W], got shape {tuple(human_ids.shape)}")
    batched = human_ids if human_ids.ndim == 3 else human_ids.unsqueeze(0)
    edges = _gradient_nonzero(batched).long()
    return edges if human_ids.ndim == 3 else edges[0]


class PGNLoss(nn.Module):
    """PGN's training loss (train_pgn.py): ``parsing_weight * sum(parsing terms) + edge_weight * sum(edge terms)``.

    - Parsing term, for the refined and the first-stage logits: CE over the valid pixels ("global") plus CE over
      the valid pixels whose refined edge probability exceeds ``local_threshold`` = 0.1 ("local"; the mask is not
      back-propagated; an empty mask gives 0 where the reference gives NaN).
    - Edge term, for the refined edge, the first-stage edge and the three deep supervisions: per image, with
      ``t`` the sigmoid CE against :func:`instance_edges` of ``human_ids``, ``pos_w = neg/total``,
      ``neg_w = pos/total``: ``edge_pos_weight * pos_w * sum_pos t * (1 + person) + neg_w * sum_neg t * (1 + person)``
      (``person`` = mask > 0, the reference's extra term on person pixels), averaged over the batch.

    Weights: the reference uses ``parsing_weight=50``, ``edge_weight=0.005`` with edge terms summed over the
    pixels (lr 1e-5, 512x512 crops); ``edge_reduction="sum"`` with those weights reproduces it. The defaults
    keep its ratio at 512x512 but divide by the pixel count (resolution-independent) and by 50 (so the parsing
    term has unit weight at seglab's usual learning rates): ``parsing_weight=1``, ``edge_weight=0.005 * 512**2
    / 50 = 26.2144``, edge terms averaged over the valid pixels. Logits are upsampled to the target (the
    reference computes the parsing CE at 1/8 against a nearest-downsampled label); pixels with the ignore
    label are left out of every term (the reference has no ignore on edges). The heads have no BN and start
    at N(0, 0.01): the reference's effective step on the parsing term is 1e-5 x 50 = 5e-4, and with these
    defaults plain SGD at 1e-2 diverges on a tiny batch; use a learning rate of order 1e-4 to 5e-4.

    ``forward(outputs, target) -> (total, parts)``; ``outputs`` the model's train dict, ``target`` a dict with
    ``"mask"`` ``[B, H, W]`` and ``"human_ids"`` ``[B, H, W]``; ``parts`` has ``loss``, ``loss_out``,
    ``loss_aux0``, ``loss_edge`` and ``loss_edge_aux0..3`` (unweighted terms).
    """

    def __init__(
        self,
        parsing_weight: float = 1.0,
        edge_weight: float = 0.005 * 512**2 / 50,
        edge_pos_weight: float = 2.0,
        local_threshold: float = 0.1,
        edge_reduction: str = "mean",
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if edge_reduction not in ("mean", "sum"):
            raise ValueError(f"edge_reduction must be 'mean' or 'sum', got {edge_reduction!r}")
        self.parsing_weight, self.edge_weight = float(parsing_weight), float(edge_weight)
        self.edge_pos_weight, self.local_threshold = float(edge_pos_weight), float(local_threshold)
        self.edge_reduction, self.ignore_index = edge_reduction, int(ignore_index)

    def edge_loss(self, logits: Tensor, edge_gt: Tensor, mask: Tensor) -> Tensor:
        """Class-balanced sigmoid CE of ``logits [B, 1, H, W]`` against ``edge_gt [B, H, W]``, batch mean."""
        valid = mask != self.ignore_index
        t = F.binary_cross_entropy_with_logits(logits[:, 0].float(), edge_gt.float(), reduction="none")
        t = t * valid * (1 + ((mask > 0) & valid).float())  # the person-pixel term counts those pixels twice
        positive = edge_gt > 0
        n_valid = valid.sum((1, 2)).clamp_min(1).float()
        n_pos = (positive & valid).sum((1, 2)).float()
        pos_w, neg_w = (n_valid - n_pos) / n_valid, n_pos / n_valid
        per_image = self.edge_pos_weight * pos_w * (t * positive).sum((1, 2)) + neg_w * (t * ~positive).sum((1, 2))
        if self.edge_reduction == "mean":
            per_image = per_image / n_valid
        return per_image.mean()

    def forward(self, outputs: dict, target: dict) -> tuple[Tensor, dict[str, float]]:
        if not isinstance(outputs, dict) or not {"out", "aux", "edge", "edge_aux"} <= set(outputs):
            raise ValueError("PGNLoss needs PGN's train-mode outputs {'out', 'aux', 'edge', 'edge_aux'}")
        if not isinstance(target, dict) or not {"mask", "human_ids"} <= set(target):
            raise ValueError("PGNLoss needs target {'mask': [B,H,W], 'human_ids': [B,H,W]} (CIHP items with "
                             "with_humans=True)")
        mask, human_ids = target["mask"], target["human_ids"]
        size = mask.shape[-2:]

        def resize(t: Tensor) -> Tensor:
            return t if t.shape[-2:] == size else F.interpolate(t, size=size, mode="bilinear", align_corners=False)

        valid = mask != self.ignore_index
        refined_edge = torch.sigmoid(resize(outputs["edge"].detach().float()))[:, 0]
        local = valid & (refined_edge > self.local_threshold)
        terms: dict[str, Tensor] = {}
        parsing = [("loss_out", outputs["out"])] + [(f"loss_aux{i}", a) for i, a in enumerate(outputs["aux"])]
        for name, logits in parsing:
            ce = F.cross_entropy(resize(logits).float(), mask, ignore_index=self.ignore_index, reduction="none")
            terms[name] = ce.sum() / valid.sum().clamp_min(1) + (ce * local).sum() / local.sum().clamp_min(1)
        edge_gt = instance_edges(human_ids)
        edges = [("loss_edge", outputs["edge"])] + [(f"loss_edge_aux{i}", e) for i, e in enumerate(outputs["edge_aux"])]
        for name, logits in edges:
            terms[name] = self.edge_loss(resize(logits), edge_gt, mask)
        parsing_total = sum(terms[name] for name, _ in parsing)
        edge_total = sum(terms[name] for name, _ in edges)
        total = self.parsing_weight * parsing_total + self.edge_weight * edge_total
        parts = {"loss": total.item(), **{name: value.item() for name, value in terms.items()}}
        return total, parts


def _region_adjacency(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a, b)`` of 4-adjacent nonzero labels (both orders) and the number of pixel contacts of each."""
    pairs = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        touching = (a != b) & (a > 0) & (b > 0)
        pairs += [np.stack([a[touching], b[touching]], 1), np.stack([b[touching], a[touching]], 1)]
    pairs = np.concatenate(pairs)
    if len(pairs) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    return np.unique(pairs, axis=0, return_counts=True)


def _merge_part_regions(labels: np.ndarray, parsing: np.ndarray, min_area: int) -> np.ndarray:
    """Merge each region that is not a person (one parsing label, or ``min_area`` pixels or fewer), smallest first,
    into the neighbour it shares the most boundary with, until none touches another region.

    Merging only grows areas and label sets, so a region's statistics and adjacency are updated in place and the
    regions still to merge are kept in a heap keyed by (area, id)."""
    count = int(labels.max())
    foreground = labels > 0
    areas = np.bincount(labels.ravel(), minlength=count + 1).tolist()
    classes: list[set[int]] = [set() for _ in range(count + 1)]
    num_classes = int(parsing.max()) + 1
    for key in np.unique(labels[foreground] * num_classes + parsing[foreground]).tolist():
        classes[key // num_classes].add(key % num_classes)
    adjacency: list[dict[int, int]] = [{} for _ in range(count + 1)]
    pairs, contacts = _region_adjacency(labels)
    for (a, b), c in zip(pairs.tolist(), contacts.tolist(), strict=True):
        adjacency[a][b] = c

    def is_part(region: int) -> bool:
        return len(classes[region]) <= 1 or areas[region] <= min_area

    heap = [(areas[r], r) for r in range(1, count + 1) if areas[r] and is_part(r)]
    heapq.heapify(heap)
    parent = list(range(count + 1))
    while heap:
        area, region = heapq.heappop(heap)
        if parent[region] != region or area != areas[region] or not adjacency[region]:
            continue  # merged already, a stale entry, or isolated (stays a person)
        best = max(adjacency[region].items(), key=lambda nc: (nc[1], areas[nc[0]], -nc[0]))[0]
        parent[region] = best
        areas[best] += areas[region]
        classes[best] |= classes[region]
        for neighbour, c in adjacency[region].items():
            del adjacency[neighbour][region]
            if neighbour != best:
                adjacency[best][neighbour] = adjacency[best].get(neighbour, 0) + c
                adjacency[neighbour][best] = adjacency[neighbour].get(best, 0) + c
        adjacency[region] = {}
        if is_part(best):
            heapq.heappush(heap, (areas[best], best))
    root = np.arange(count + 1)
    for region in range(1, count + 1):
        r = region
        while parent[r] != r:
            r = parent[r]
        root[region] = r
    return root[labels]


def group_instances(
    parsing_probs: np.ndarray | Tensor, edge_probs: np.ndarray | Tensor, *, edge_threshold: float = 0.2,
    min_area: int = 30,
) -> dict:
    """Group a parsing map ``[C, H, W]`` (class probabilities) and an instance-edge map ``[H, W]`` into persons
    and part instances, after the reference's MATLAB instance_tool.

    Persons (search.m, bfs.m, region_merge.m): the edge map thresholded at ``edge_threshold`` (0.2) and closed;
    regions = 4-connected components of the foreground (argmax != 0) minus the edge pixels (the reference's
    row/column scan and BFS give the same components); a region with one parsing label or at most ``min_area``
    (30) pixels is a part, merged into the neighbour it touches most, smallest first, until no part touches
    another region (the reference merges into the first region found 2 px beyond its boundary); an isolated part
    stays a person. Simplified: edge pixels are then given to the nearest region (the reference thins the edges
    to 1 px and leaves them unassigned), and the reference's extension of edges near the bottom/right border is
    left out. Persons are numbered 1..N by decreasing area; a person's score is its area in pixels (as
    generate_instance_human.m writes it); its box is ``(x_min, y_min, x_max, y_max)`` in inclusive pixel indices.

    Parts (generate_instance_part.m): each class k >= 1 within each person; score = area x mean parsing score x
    edge score, the edge score being ``sum(E) / count(E > 0)`` over the part with ``E = imgradient(parsing) > 0
    + edge_probs`` (0 if no pixel has E > 0). The parsing score is the max class probability (the reference uses
    the max of the averaged logits).

    Returns ``{"parsing": int64 [H, W], "human_ids": int64 [H, W] (0 background), "humans": [{"id", "score",
    "box"}], "parts": [{"human_id", "class", "score", "mask": bool [H, W]}]}`` (parts ordered by class, then
    person).
    """
    probs = np.asarray(parsing_probs.detach().cpu() if isinstance(parsing_probs, Tensor) else parsing_probs,
                       dtype=np.float64)
    edge_map = np.asarray(edge_probs.detach().cpu() if isinstance(edge_probs, Tensor) else edge_probs,
                          dtype=np.float64)
    if probs.ndim != 3 or edge_map.shape != probs.shape[1:]:
        raise ValueError(f"expected parsing_probs [C, H, W] and edge_probs [H, W] of the same size, got "
                         f"{probs.shape} and {edge_map.shape}")
    parsing = probs.argmax(0).astype(np.int64)
    foreground = parsing != 0
    edge = edge_map >= edge_threshold
    edge |= ndimage.binary_closing(edge, structure=np.ones((3, 3), bool))
    four = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(foreground & ~edge, structure=four)
    if count == 0:  # the whole foreground is edge: fall back to its components
        labels, count = ndimage.label(foreground, structure=four)
    if count:
        unassigned = foreground & (labels == 0)
        if unassigned.any():
            _, (rows, cols) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
            labels[unassigned] = labels[rows[unassigned], cols[unassigned]]
        labels = _merge_part_regions(labels.astype(np.int64), parsing, min_area)

    areas = np.bincount(labels.ravel())
    order = sorted((r for r in range(1, len(areas)) if areas[r] > 0), key=lambda r: (-areas[r], r))
    new_id = np.zeros(len(areas), np.int64)
    new_id[order] = np.arange(1, len(order) + 1)
    human_ids = new_id[labels]
    humans = []
    for index, box in enumerate(ndimage.find_objects(human_ids), start=1):
        rows, cols = box
        humans.append({"id": index, "score": float(areas[order[index - 1]]),
                       "box": (float(cols.start), float(rows.start), float(cols.stop - 1), float(rows.stop - 1))})

    # part instances: one per (class >= 1, person) pair present, ordered by class then person
    part_edge = _gradient_nonzero(torch.from_numpy(parsing)[None])[0].numpy()
    edge_sum = part_edge + edge_map
    inside = (parsing > 0) & (human_ids > 0)
    num_people = len(humans) + 1
    keys, inverse, areas_of = np.unique(parsing[inside] * num_people + human_ids[inside], return_inverse=True,
                                        return_counts=True)
    prob_sum = np.bincount(inverse, weights=probs.max(0)[inside], minlength=len(keys))
    edge_total = np.bincount(inverse, weights=edge_sum[inside], minlength=len(keys))
    edge_positive = np.bincount(inverse, weights=edge_sum[inside] > 0, minlength=len(keys))
    part_index = np.full(parsing.shape, -1, np.int64)
    part_index[inside] = inverse
    parts = []
    for i, key in enumerate(keys.tolist()):
        edge_score = edge_total[i] / edge_positive[i] if edge_positive[i] else 0.0
        score = float(areas_of[i] * (prob_sum[i] / areas_of[i]) * edge_score)
        parts.append({"human_id": key % num_people, "class": key // num_people, "score": score,
                      "mask": part_index == i})
    return {"parsing": parsing, "human_ids": human_ids, "humans": humans, "parts": parts}
