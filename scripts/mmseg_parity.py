"""Compare seglab's converted mmsegmentation models with mmsegmentation itself (not part of the test suite).

mmsegmentation needs mmcv and mmengine, which seglab does not depend on, so the reference runs in a separate
environment: ``python scripts/mmseg_parity.py --mmseg-python /path/to/venv/bin/python`` runs the ``reference``
step there (mmseg 1.2.2, mmcv-lite 2.1.0, mmengine) and the comparison here:

1. reference (mmseg's python): builds mmseg's UperNet-Swin-T, BiSeNet v1 (ResNet-18), BiSeNet v2, and FCN,
   DeepLabv3 and Semantic FPN on ResNetV1c-50 from mmseg's own configs (SyncBN as BN), draws random weights
   (mmseg's initialisation, then random BatchNorm statistics, norm weights and relative-position tables, so every
   tensor matters), saves each as a checkpoint the way an mmengine run does (``meta`` with ``dataset_meta``, the
   ``state_dict``, and a ``message_hub`` holding mmengine ``HistoryBuffer`` objects and numpy values), and saves
   its logits (decode head, resized bilinearly to the input, as ``EncoderDecoder.encode_decode``) and its
   auxiliary heads' raw outputs on fixed inputs;
2. compare (seglab's python): converts each checkpoint with ``seglab.convert.mmseg.convert_mmseg`` (the file read
   without unpickling code), loads the weights and compares the logits and (UperNet, BiSeNet) the aux outputs.

Setting up the reference environment (CPU): ``python -m venv V; V/bin/pip install torch==2.14.1
torchvision==0.29.1 mmsegmentation==1.2.2 mmcv-lite==2.1.0 mmengine ftfy regex`` (mmseg imports ftfy and regex
at load without declaring them).

mmcv-lite has no compiled ops (``mmcv._ext``), which ``mmcv.ops`` imports at load; these models use none, so the
reference step stands in a module whose functions raise if called. Prints one line per model and input size: the
largest absolute difference, its ratio to the logits' spread, and the share of pixels whose argmax agrees.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = {  # config (mmseg 1.x name) -> input sizes (H, W)
    "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512": [(512, 512), (480, 640), (375, 500)],
    "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024": [(512, 1024), (384, 768), (375, 500)],
    "bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024": [(512, 1024), (384, 768), (375, 500)],
    # the ResNetV1c families (seglab.convert.mmseg.resnet): logits only
    "fcn_r50-d8_4xb2-40k_cityscapes-512x1024": [(256, 512)],
    "deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024": [(256, 512)],
    "fpn_r50_4xb2-80k_cityscapes-512x1024": [(256, 512)],
}
FOLDERS = {"swin": "swin", "bisenetv1": "bisenetv1", "bisenetv2": "bisenetv2", "fcn": "fcn", "deeplabv3": "deeplabv3",
           "fpn": "sem_fpn"}


def _stub_mmcv_ext() -> None:
    import sys
    import types

    ext = types.ModuleType("mmcv._ext")

    def missing(name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def op(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name}: compiled op, not in mmcv-lite")

        return op

    ext.__getattr__ = missing
    sys.modules["mmcv._ext"] = ext


def _without_pretrained(cfg):
    """``cfg`` without ``init_cfg=dict(type='Pretrained', ...)`` entries (nothing is downloaded)."""
    if isinstance(cfg, dict):
        return {k: _without_pretrained(v) for k, v in cfg.items()
                if not (k == "init_cfg" and isinstance(v, dict) and v.get("type") == "Pretrained")}
    if isinstance(cfg, list):
        return [_without_pretrained(v) for v in cfg]
    return cfg


def reference(out: Path) -> None:
    """Run under mmseg's python: checkpoints, inputs and mmseg's outputs into ``out``."""
    _stub_mmcv_ext()
    import os

    import mmseg
    import numpy as np
    import torch
    import torch.nn.functional as F
    from mmengine.config import Config
    from mmengine.logging import MessageHub
    from mmseg.registry import MODELS as REGISTRY
    from mmseg.utils import register_all_modules

    register_all_modules()
    configs = Path(os.path.dirname(mmseg.__file__)) / ".mim" / "configs"
    torch.manual_seed(0)
    for name, sizes in MODELS.items():
        cfg = Config.fromfile(str(configs / FOLDERS[name.split("-")[0].split("_")[0]] / f"{name}.py"))
        model_cfg = cfg.model
        model_cfg.pop("data_preprocessor", None)
        model_cfg.pop("pretrained", None)
        text = json.dumps(model_cfg.to_dict()).replace('"SyncBN"', '"BN"')
        model = REGISTRY.build(_without_pretrained(json.loads(text)))
        model.init_weights()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.running_mean.normal_(0, 0.2)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0, 0.2)
                elif isinstance(module, torch.nn.LayerNorm):
                    module.weight.normal_(1.0, 0.2)
                    module.bias.normal_(0, 0.2)
                for param_name, param in module.named_parameters(recurse=False):
                    if param_name == "relative_position_bias_table":
                        param.normal_(0, 0.5)
        model.eval()
        hub = MessageHub.get_instance(f"parity-{name}")
        for i in range(3):
            hub.update_scalar("train/loss", float(np.float32(1.0 / (i + 1))))
        hub.update_info("best_score", np.float64(0.5))
        checkpoint = {
            "meta": {"dataset_meta": {"classes": tuple(f"class{i}" for i in range(model.decode_head.num_classes))},
                     "seed": np.int64(0), "mmengine_version": "0.10.7", "iter": 160000},
            "state_dict": model.state_dict(),
            "message_hub": hub.state_dict(),
        }
        torch.save(checkpoint, out / f"{name}.pth")
        results = {}
        with torch.no_grad():
            for h, w in sizes:
                x = torch.randn(1, 3, h, w)
                feats = model.extract_feat(x)
                logits = F.interpolate(model.decode_head(feats), size=(h, w), mode="bilinear", align_corners=False)
                heads = getattr(model, "auxiliary_head", None)
                heads = [] if heads is None else heads if isinstance(heads, torch.nn.ModuleList) else [heads]
                results[f"{h}x{w}"] = {"x": x, "logits": logits, "aux": [head(feats) for head in heads]}
        torch.save(results, out / f"{name}.outputs.pt")
        print(f"reference: {name}: {sum(p.numel() for p in model.parameters()):,} parameters")


def _aux_outputs(net, x):
    """seglab's aux heads' raw outputs (eval mode, before upsampling), in mmseg's order (None: not compared)."""
    from seglab.models.layers import pad_to_multiple

    name = type(net).__name__
    if name not in ("UperNet", "BiSeNetV1", "BiSeNetV2"):
        return None
    if name == "UperNet":
        return [net.aux_head(net.backbone(x)[2])]
    x = pad_to_multiple(x, 32)
    if name == "BiSeNetV1":
        context8, context16 = net.context_path(x)
        return [net.aux_heads[0](context8), net.aux_heads[1](context16)]
    stages = net.semantic_branch(x)[:4]
    return [head(feat) for head, feat in zip(net.aux_heads, stages, strict=True)]


def compare(folder: Path) -> None:
    """Run under seglab's python: convert each checkpoint and compare with mmseg's outputs."""
    import torch

    import seglab
    from seglab.checkpoint import load_weights, read_metadata
    from seglab.convert.mmseg import convert_mmseg

    for name in MODELS:
        dst = convert_mmseg(name, folder / f"{name}.pth", folder / f"{name}.safetensors")
        meta = read_metadata(dst)
        net = seglab.create_model(meta["model"], num_classes=meta["num_classes"], **meta["model_kwargs"]).eval()
        load_weights(net, dst)
        outputs = torch.load(folder / f"{name}.outputs.pt", weights_only=True)
        for size, ref in outputs.items():
            with torch.no_grad():
                logits = net(ref["x"])
                aux = _aux_outputs(net, ref["x"])
            diff = (logits - ref["logits"]).abs().max().item()
            spread = ref["logits"].std().item()
            agree = (logits.argmax(1) == ref["logits"].argmax(1)).float().mean().item()
            line = (f"{meta['model']:26s} {size:>8s}: logits max |diff| {diff:.2e} ({diff / spread:.1e} of their "
                    f"std), argmax agrees on {agree:.4%} of pixels")
            if aux is not None:
                aux_diff = max(
                    (a[..., : r.shape[-2], : r.shape[-1]] - r).abs().max().item() / r.std().item()
                    for a, r in zip(aux, ref["aux"], strict=True)
                )
                line += f"; aux heads max |diff| / std {aux_diff:.1e}"
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mmseg-python", help="python of an environment with mmsegmentation (runs the reference)")
    parser.add_argument("--step", choices=["reference", "compare"], help="run one step (into/from --folder)")
    parser.add_argument("--folder", type=Path, help="where the checkpoints and outputs go (default: a temp folder)")
    args = parser.parse_args()
    if args.step == "reference":
        reference(args.folder)
        return
    if args.step == "compare":
        compare(args.folder)
        return
    if not args.mmseg_python:
        parser.error("--mmseg-python is needed (or --step with --folder)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([args.mmseg_python, __file__, "--step", "reference", "--folder", str(folder)], check=True)
        compare(folder)


if __name__ == "__main__":
    sys.exit(main())
