"""Semantic segmentation models. Importing a family module registers its factories."""

from seglab.models.semantic import fcn, unet  # noqa: F401
