"""torchvision's ``RoIHeads`` with a branch of one's own after the box branch, for the R-CNNs that add one.

Mask Scoring R-CNN (:mod:`seglab.models.instance.mask_scoring_rcnn`) and Parsing R-CNN
(:mod:`seglab.models.parsing.parsing_rcnn`) subclass :class:`BoxBranchRoIHeads`: its ``forward`` runs the box
branch exactly as torchvision's ``RoIHeads.forward`` does (proposal sampling, box head, Fast R-CNN loss in
training; post-processing in eval mode) and hands the sampled proposals (:class:`Sampled`) or the detections
(:class:`Detections`) to the subclass's :meth:`~BoxBranchRoIHeads.branch_losses` /
:meth:`~BoxBranchRoIHeads.branch_outputs`. :meth:`BoxBranchRoIHeads.from_roi_heads` builds one from the
``roi_heads`` of a torchvision detector.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

__all__ = ["BoxBranchRoIHeads", "Detections", "Sampled"]

_Heads = TypeVar("_Heads", bound="BoxBranchRoIHeads")


class Sampled(NamedTuple):
    """The box branch's training samples, per image: the proposals [K, 4] (ground-truth boxes included), the
    index of the target each is matched to, and its label (0: background, -1: ignored)."""

    proposals: list[Tensor]
    matched_idxs: list[Tensor]
    labels: list[Tensor]


class Detections(NamedTuple):
    """The box branch's detections per image, after score thresholding and per-class NMS."""

    boxes: list[Tensor]
    scores: list[Tensor]
    labels: list[Tensor]


class BoxBranchRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` box branch followed by the subclass's branch.

    Subclasses implement :meth:`branch_losses` and :meth:`branch_outputs`, and extend :meth:`check_targets` to
    validate the targets their branch reads.
    """

    @classmethod
    def from_roi_heads(cls: type[_Heads], heads: RoIHeads, **branch: Any) -> _Heads:
        """The same box modules and settings as ``heads``, plus the keyword arguments ``branch`` of ``cls``."""
        return cls(
            heads.box_roi_pool, heads.box_head, heads.box_predictor,
            heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
            **branch,
        )

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: ``([], box losses + branch losses)``. Eval: per image ``{"boxes", "labels", "scores"}`` and
        the branch's outputs, ``{}``."""
        if self.training:
            sampled, losses = self.box_losses(features, proposals, image_shapes, targets)
            return [], {**losses, **self.branch_losses(features, image_shapes, sampled, targets)}
        detections = self.box_detections(features, proposals, image_shapes)
        extras = self.branch_outputs(features, image_shapes, detections)
        return [
            {"boxes": b, "labels": lab, "scores": s, **extra}
            for b, s, lab, extra in zip(*detections, extras, strict=True)
        ], {}

    def _box_scores(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        return self.box_predictor(box_features)

    def box_losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None,
    ) -> tuple[Sampled, dict[str, Tensor]]:
        """Training: checks ``targets``, samples the proposals against them and scores the samples. Returns the
        samples and the box losses ``{"loss_classifier", "loss_box_reg"}``."""
        if targets is None:
            raise ValueError("targets are required in training mode")
        self.check_targets(targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self._box_scores(features, proposals, image_shapes)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        return Sampled(proposals, matched_idxs, labels), losses

    def box_detections(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Detections:
        """Eval: the detections per image."""
        class_logits, box_regression = self._box_scores(features, proposals, image_shapes)
        return Detections(*self.postprocess_detections(class_logits, box_regression, proposals, image_shapes))

    def branch_losses(
        self, features: dict[str, Tensor], image_shapes: list[tuple[int, int]], sampled: Sampled,
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The branch's losses on the box branch's training samples."""
        raise NotImplementedError

    def branch_outputs(
        self, features: dict[str, Tensor], image_shapes: list[tuple[int, int]], detections: Detections
    ) -> list[dict[str, Tensor]]:
        """The branch's outputs for the detections, one dict per image, added to the image's detections."""
        raise NotImplementedError
