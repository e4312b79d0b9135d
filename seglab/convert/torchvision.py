"""Load torchvision's segmentation and detection checkpoints into seglab models, and convert them to seglab weights.

seglab's ``fcn_resnet*``, ``deeplabv3_*`` and ``lraspp_mobilenet_v3_large`` are built from torchvision's own
modules with torchvision's attribute names, so a torchvision state dict loads as it is: the only mapping is
dropping a ``module.`` prefix (checkpoints saved from ``DistributedDataParallel``). Files are read only through
:func:`seglab.checkpoint.load_state_dict` (safetensors, or ``.pth`` with ``weights_only=True``); a checkpoint of
torchvision's reference training scripts (``{"model": ..., "optimizer": ...}``) is unwrapped there.

Unless given, ``num_classes`` is read from the classifier's shape and ``aux_loss`` from whether the file holds
``aux_classifier.*`` weights, so torchvision's published files (21 VOC classes, with the aux head) convert with
no options.

Detection: seglab's ``mask_rcnn_resnet50_fpn`` (torchvision's name ``maskrcnn_resnet50_fpn`` is an alias) and
``mask_rcnn_resnet101_fpn`` are torchvision's ``MaskRCNN`` with the same keys; ``num_classes`` is read from
``roi_heads.box_predictor.cls_score.weight``. Their backbone BN is ``FrozenBatchNorm2d``, which has no
``num_batches_tracked``: those counters (present in state dicts of torchvision models built with plain BN, e.g.
``weights=None``) are dropped, and every other key and shape must match. A detector's weights file records the
sizes its transform resizes images to (``min_size``/``max_size`` in ``model_kwargs``: the factory's 800/1333 unless
given), so ``seglab predict`` rebuilds it with the same ones; a 91-class detector (torchvision's COCO label space,
labels = COCO category ids, unused ids named "N/A") records label set ``coco``, those class names and the identity
label -> category id map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from seglab.checkpoint import load_into, read_state_dict, save_weights
from seglab.errors import CheckpointError
from seglab.models import create_model

__all__ = ["ALIASES", "TORCHVISION_MODELS", "convert_torchvision", "load_torchvision"]

# torchvision segmentation model -> the state-dict key of its final classifier weight [num_classes, C, 1, 1].
TORCHVISION_MODELS = {
    "fcn_resnet50": "classifier.4.weight",
    "fcn_resnet101": "classifier.4.weight",
    "deeplabv3_resnet50": "classifier.4.weight",
    "deeplabv3_resnet101": "classifier.4.weight",
    "deeplabv3_mobilenet_v3_large": "classifier.4.weight",
    "lraspp_mobilenet_v3_large": "classifier.low_classifier.weight",
    "mask_rcnn_resnet50_fpn": "roi_heads.box_predictor.cls_score.weight",
    "mask_rcnn_resnet101_fpn": "roi_heads.box_predictor.cls_score.weight",
}
# torchvision's model names that differ from seglab's
ALIASES = {"maskrcnn_resnet50_fpn": "mask_rcnn_resnet50_fpn"}
DETECTION_MODELS = ("mask_rcnn_resnet50_fpn", "mask_rcnn_resnet101_fpn")

_STATE_DICT = dict[str, torch.Tensor]


def _check_name(name: str) -> str:
    """seglab's name for torchvision model ``name`` (aliases resolved)."""
    name = ALIASES.get(name, name)
    if name not in TORCHVISION_MODELS:
        raise CheckpointError(
            f"{name!r} is not a torchvision segmentation model seglab converts (nor a detection model); expected "
            f"one of {', '.join([*TORCHVISION_MODELS, *ALIASES])}"
        )
    return name


def _resolve_kwargs(name: str, state_dict: _STATE_DICT, source: str, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(model_kwargs)
    classifier_key = TORCHVISION_MODELS[name]
    if "num_classes" not in kwargs:
        if classifier_key not in state_dict:
            raise CheckpointError(
                f"{source}: no {classifier_key!r}, so not a torchvision {name} state dict (keys start "
                f"{', '.join(list(state_dict)[:5])} ...)"
            )
        kwargs["num_classes"] = int(state_dict[classifier_key].shape[0])
    if "aux_loss" not in kwargs and not name.startswith("lraspp") and name not in DETECTION_MODELS:
        kwargs["aux_loss"] = any(k.startswith("aux_classifier.") for k in state_dict)
    return kwargs


def _load(name: str, state_dict_or_path: _STATE_DICT | str | Path, model_kwargs: dict[str, Any]):
    name = _check_name(name)
    state_dict, source = read_state_dict(state_dict_or_path, "torchvision")
    kwargs = _resolve_kwargs(name, state_dict, source, model_kwargs)
    model = create_model(name, **kwargs)
    if name in DETECTION_MODELS:
        own = model.state_dict()
        state_dict = {k: v for k, v in state_dict.items() if k in own or not k.endswith(".num_batches_tracked")}
    load_into(model, state_dict, f"{source} (torchvision {name})")
    return model, name, kwargs


def load_torchvision(name: str, state_dict_or_path: _STATE_DICT | str | Path, **model_kwargs: Any) -> nn.Module:
    """Build seglab model ``name`` and load torchvision's state dict (a mapping, or a file) into it, strictly.

    ``model_kwargs`` go to the factory; ``num_classes`` and ``aux_loss`` default to what the state dict holds.
    Raises :class:`~seglab.errors.CheckpointError` listing missing, unexpected and mismatched keys.
    """
    return _load(name, state_dict_or_path, model_kwargs)[0]


def convert_torchvision(
    name: str, src: _STATE_DICT | str | Path, dst: str | Path, *, label_set: str | None = None, **model_kwargs: Any
) -> Path:
    """Convert torchvision's checkpoint ``src`` of model ``name`` to the seglab weights file ``dst``.

    ``dst`` is a safetensors file whose metadata (model: seglab's name, num_classes, model_kwargs, label_set)
    lets ``seglab predict --weights dst`` rebuild the model. ``model_kwargs`` go to the factory (detectors:
    ``min_size``, ``max_size``, ``box_score_thresh``, ...) and are recorded, a detector's resize sizes always.
    ``label_set`` defaults to ``coco`` for a 91-class detector, to ``voc`` for a segmentation model (torchvision's
    published ones have VOC's 21 classes), and is not recorded for other detectors. Returns ``dst``.
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the converted weights are written as safetensors; name it *.safetensors")
    model, name, kwargs = _load(name, src, model_kwargs)
    from seglab.pretrained import transform_sizes

    num_classes = kwargs.pop("num_classes")
    kwargs.pop("pretrained_backbone", None)
    kwargs.update(transform_sizes(model))
    coco_detector = name in DETECTION_MODELS and num_classes == 91
    if label_set is None and (coco_detector or name not in DETECTION_MODELS):
        label_set = "coco" if coco_detector else "voc"
    metadata = {"model": name, "num_classes": num_classes, "model_kwargs": kwargs}
    if label_set is not None:
        metadata["label_set"] = label_set
    if coco_detector:
        # torchvision's COCO label space: label = COCO category id (1..90, with gaps named "N/A")
        from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

        metadata["classes"] = list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
        metadata["label_to_cat_id"] = {str(i): i for i in range(1, 91)}
    return save_weights(dst, model.state_dict(), metadata)
