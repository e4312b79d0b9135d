"""Instance segmentation models on torchvision.models.detection parts (the torchvision detection contract)."""

from seglab.models.instance import fast_rcnn, mask_rcnn, mask_scoring_rcnn  # noqa: F401
