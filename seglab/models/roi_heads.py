"""The box branch of torchvision's ``RoIHeads`` for the R-CNNs that add a branch of their own.

Mask Scoring R-CNN (:mod:`seglab.models.instance.mask_scoring_rcnn`) and Parsing R-CNN
(:mod:`seglab.models.parsing.parsing_rcnn`) subclass torchvision's ``RoIHeads`` and write their own ``forward``
around its box branch. :class:`BoxBranchRoIHeads` gives them that branch once, exactly as torchvision's
``RoIHeads.forward`` runs it (proposal sampling, box head, Fast R-CNN loss; post-processing in eval mode), and
:meth:`BoxBranchRoIHeads.from_roi_heads` builds one from the ``roi_heads`` of a torchvision detector.
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

__all__ = ["BoxBranchRoIHeads"]

_Heads = TypeVar("_Heads", bound="BoxBranchRoIHeads")


class BoxBranchRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with its box branch as two calls: :meth:`box_losses` (training) and
    :meth:`box_detections` (eval). Subclasses extend :meth:`check_targets` to validate their own targets."""

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
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], dict[str, Tensor]]:
        """Training: checks ``targets``, samples the proposals against them and scores the samples. Returns the
        sampled proposals, their matched target indices and labels (per image), and the box losses
        ``{"loss_classifier", "loss_box_reg"}``."""
        if targets is None:
            raise ValueError("targets are required in training mode")
        self.check_targets(targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self._box_scores(features, proposals, image_shapes)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        return proposals, matched_idxs, labels, {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def box_detections(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Eval: the detections per image after score thresholding and per-class NMS: (boxes, scores, labels)."""
        class_logits, box_regression = self._box_scores(features, proposals, image_shapes)
        return self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
