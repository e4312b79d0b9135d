"""Semantic segmentation models. Importing a family module registers its factories."""

from seglab.models.semantic import (  # noqa: F401
    adapnet,
    bisenet,
    deeplabv3,
    enet,
    fcn,
    fcn_resnet,
    frrn,
    lraspp,
    segformer,
    segnet,
    semantic_fpn,
    unet,
    unet_resnet,
    upernet,
)
