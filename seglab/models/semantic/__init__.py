"""Semantic segmentation models. Importing a family module registers its factories."""

from seglab.models.semantic import (  # noqa: F401
    bisenet,
    deeplabv3,
    enet,
    fcn,
    fcn_resnet,
    lraspp,
    segnet,
    semantic_fpn,
    unet,
    upernet,
)
