"""Parsing R-CNN in the form torch's ONNX exporter traces: a paste-back whose detection count stays dynamic.

:func:`seglab.models.parsing.parsing_rcnn.paste_parsing_in_image` loops in Python over the detections and crops
each box with Python ints (``boxes[k].tolist()``): a trace would record the traced image's detection count and
boxes as constants. :func:`paste_parsing_loop` computes the same labels in a TorchScript loop (scripted when
traced, as torchvision's ``_onnx_paste_masks_in_image_loop``; an ONNX ``Loop``): per detection it samples the
probabilities at every pixel centre of the image (the same grid values the eager paste computes for the pixels
inside the box), takes the argmax and zeroes the pixels whose centre lies outside the box. Eagerly it equals
``paste_parsing_in_image`` exactly; memory is one detection's ``C x H x W`` at a time.

Unlike :mod:`seglab.export.onnx` this module imports torch (TorchScript resolves ``torch`` from module globals);
``seglab.export.onnx`` imports it only when exporting a Parsing R-CNN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

OUTPUT_NAMES = ("boxes", "labels", "scores", "parsing", "parsing_scores")


def _paste_one(prob: Tensor, box: Tensor, height: int, width: int) -> Tensor:
    """One person's ``[C, M, M]`` probabilities pasted into an ``height x width`` image: Int64[H, W]."""
    x1, y1, x2, y2 = box[0], box[1], box[2], box[3]
    xs = torch.arange(width, dtype=prob.dtype, device=prob.device) + 0.5  # pixel centres
    ys = torch.arange(height, dtype=prob.dtype, device=prob.device) + 0.5
    # The eager paste's grid: -1/+1 at the box's edges (grid_sample with align_corners=False).
    gx = (xs - x1) / torch.clamp(x2 - x1, min=1e-6) * 2 - 1
    gy = (ys - y1) / torch.clamp(y2 - y1, min=1e-6) * 2 - 1
    grid = torch.stack((gx[None, :].expand(height, width), gy[:, None].expand(height, width)), dim=-1)
    sampled = F.grid_sample(prob[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)
    inside = ((ys >= y1) & (ys <= y2))[:, None] & ((xs >= x1) & (xs <= x2))[None, :]
    return sampled[0].argmax(0) * inside.to(torch.int64)


@torch.jit._script_if_tracing
def paste_parsing_loop(probs: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """``paste_parsing_in_image(probs, boxes, (height, width))`` with a loop the ONNX export keeps dynamic."""
    out = torch.zeros(0, height, width, dtype=torch.int64, device=probs.device)
    for k in range(probs.size(0)):
        out = torch.cat((out, _paste_one(probs[k], boxes[k], height, width).unsqueeze(0)))
    return out


class ParsingRCNNExport(nn.Module):
    """A :class:`~seglab.models.parsing.parsing_rcnn.ParsingRCNN` in eval mode, one image in, a tuple out:
    ``(boxes, labels, scores, parsing, parsing_scores)`` as the model's eval dict.

    The steps of the model's eval forward (torchvision's transform, backbone, RPN, box branch, then the parsing
    branch and the paste), in the form the tracer keeps dynamic in the detection count: the RoIs are one tensor
    (``ParsingRoIHeads`` splits per image with ``len()``, which a trace records as a constant), the parsing head
    runs on the detections plus one extra RoI (the whole image) whose output is dropped (with no detections the
    exported GroupNorm would reshape an empty batch to ``[0, groups, -1]``, which onnxruntime rejects; every RoI
    is computed independently, so the extra one changes nothing), and the paste is :func:`paste_parsing_loop`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        model, heads = self.model, self.model.roi_heads
        height, width = (int(v) for v in images[0].shape[-2:])  # constants: the export is at a fixed size
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals,
                                                             batch.image_sizes)
        resized_h, resized_w = batch.image_sizes[0]
        whole = torch.tensor([[0.0, 0.0, float(resized_w), float(resized_h)]], device=boxes[0].device)
        rois = torch.cat([boxes[0], whole])
        probs = heads.parsing_logits(features, [rois], batch.image_sizes).softmax(dim=1)[:-1]
        det = model.transform.postprocess([{"boxes": boxes[0], "labels": labels[0], "scores": scores[0]}],
                                          batch.image_sizes, [(height, width)])[0]
        parsing = paste_parsing_loop(probs, det["boxes"], height, width)
        return det["boxes"], det["labels"], det["scores"], parsing, det["scores"].clone()


__all__ = ["OUTPUT_NAMES", "ParsingRCNNExport", "paste_parsing_loop"]
