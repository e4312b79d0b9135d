"""The ``seglab`` command: parses arguments, then calls the library. No logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
PARSING_LABEL_SETS = ("lip", "cihp", "atr", "pascal_person_part")  # predictions get a legend image


def parse_tta(spec: str | None) -> tuple[bool, tuple[float, ...]]:
    """Parse ``flip,scales=0.75,1,1.25`` into (flip, scales)."""
    flip, scales = False, [1.0]
    if not spec:
        return flip, tuple(scales)
    in_scales = False
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        if token == "flip":
            flip, in_scales = True, False
        elif token.startswith("scales="):
            scales, in_scales = [float(token.split("=", 1)[1])], True
        elif in_scales:
            scales.append(float(token))
        else:
            raise SystemExit(f"--tta: cannot read {token!r}; expected e.g. flip,scales=0.75,1,1.25")
    return flip, tuple(scales)


def _cmd_models(args) -> int:
    from rich.console import Console

    from seglab.model_table import models_rich_table

    Console(width=200).print(models_rich_table(args.task))
    return 0


def _cmd_train(args) -> int:
    from seglab.config import load_config
    from seglab.engine.distributed import cleanup
    from seglab.engine.evaluator import metrics_to_text
    from seglab.engine.trainer import build_trainer

    cfg = load_config(args.config, args.overrides)
    try:
        trainer = build_trainer(cfg, resume=args.resume, progress=True)
        metrics = trainer.fit()
    finally:
        cleanup()  # under torchrun: leave the process group before exiting
    if not trainer.is_main:
        return 0
    if trainer.task == "instance":
        from seglab.engine.coco_eval import instance_metrics_to_text

        print(instance_metrics_to_text(metrics))
    elif trainer.detection:
        from seglab.engine.parsing_eval import person_parsing_metrics_to_text

        print(person_parsing_metrics_to_text(metrics))
    else:
        print(metrics_to_text(metrics, trainer.label_set.classes))
    print(f"run folder: {cfg.run_dir}")
    return 0


def _cmd_eval(args) -> int:
    from seglab.checkpoint import load_weights
    from seglab.config import load_config
    from seglab.data import build_dataset
    from seglab.data.palettes import get_label_set
    from seglab.engine.evaluator import evaluate, metrics_to_text
    from seglab.engine.trainer import eval_data_config
    from seglab.registry import create_model, model_info
    from seglab.utils import atomic_write_text, resolve_device

    cfg = load_config(args.config, args.overrides)
    if model_info(cfg.model.name).task == "instance":
        return _eval_instances(cfg, args)
    if model_info(cfg.model.name).detection_contract:
        return _eval_person_parsing(cfg, args)
    if args.mode:
        cfg.eval.mode = args.mode
    if args.tta:
        cfg.eval.flip, scales = parse_tta(args.tta)
        cfg.eval.scales = list(scales)
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
    load_weights(model, args.weights)
    device = resolve_device(cfg.train.device)
    model.to(device)
    label_set = get_label_set(cfg.data.palette)
    task = "semantic" if model_info(cfg.model.name).task == "semantic" else "parsing"
    dataset = build_dataset(eval_data_config(cfg.data), cfg.data.val_split, train=False, task=task)
    e = cfg.eval
    metrics = evaluate(
        model, dataset, num_classes=cfg.model.num_classes, mode=e.mode, crop_size=tuple(e.crop_size),
        stride=tuple(e.stride), scales=tuple(e.scales), flip=e.flip, flip_pairs=label_set.flip_pairs,
        device=device, batch_size=e.batch_size, progress=True, absent=e.absent,
    )
    print(metrics_to_text(metrics, label_set.classes))
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics.to_dict(), indent=2))
        print(f"metrics written to {args.out}")
    return 0


def _eval_person_parsing(cfg, args) -> int:
    """``seglab eval`` for Parsing R-CNN: AP^p, PCP50 and the merged maps' mIoU on CIHP-style data."""
    from seglab.checkpoint import load_weights
    from seglab.data import build_dataset
    from seglab.engine.parsing_eval import evaluate_person_parsing, person_parsing_metrics_to_text
    from seglab.registry import create_model
    from seglab.utils import atomic_write_text, resolve_device

    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
    load_weights(model, args.weights)
    device = resolve_device(cfg.train.device)
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False, task="instance")
    metrics = evaluate_person_parsing(model.to(device), dataset, num_classes=cfg.model.num_classes, device=device,
                                      absent=cfg.eval.absent)
    print(person_parsing_metrics_to_text(metrics))
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics.to_dict(), indent=2))
        print(f"metrics written to {args.out}")
    return 0


def _eval_instances(cfg, args) -> int:
    """``seglab eval`` for instance models: COCO box and mask AP (pycocotools) and COCO results JSON."""
    from seglab.checkpoint import load_weights
    from seglab.data import build_dataset
    from seglab.engine.coco_eval import evaluate_instances, instance_metrics_to_text
    from seglab.registry import create_model
    from seglab.utils import atomic_write_text, resolve_device

    if args.mode or args.tta:
        raise SystemExit("seglab eval: --mode and --tta apply to semantic models only")
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
    load_weights(model, args.weights)
    device = resolve_device(cfg.train.device)
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False, task="instance")
    results_dir = Path(args.results_dir) if args.results_dir else cfg.run_dir / "coco_results"
    metrics = evaluate_instances(
        model.to(device), dataset, device=device, batch_size=cfg.eval.batch_size, results_dir=results_dir,
        progress=True,
    )
    print(instance_metrics_to_text(metrics))
    print(f"COCO results: {results_dir / 'bbox_results.json'}, {results_dir / 'segm_results.json'}")
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics.to_dict(), indent=2))
        print(f"metrics written to {args.out}")
    return 0


def _predict_instances(args, model, meta: dict) -> int:
    """``seglab predict`` for instance models: one picture per image (each instance in its own colour,
    with box, class name and score) and the instances as COCO results JSON (bbox and segm files)."""
    import numpy as np

    from seglab.data.io import read_image
    from seglab.data.palettes import get_label_set
    from seglab.engine.coco_eval import instances_to_coco_results
    from seglab.engine.inference import InstancePredictor
    from seglab.utils import atomic_write_text
    from seglab.visualize import save_instances

    num_classes = int(meta.get("num_classes") or args.num_classes or 0)
    names = meta.get("classes")
    if not names and (args.label_set or meta.get("label_set")):
        names = get_label_set(args.label_set or meta["label_set"]).classes
    names = list(names or [])
    # labels -> category ids as recorded at training; converted torchvision weights use the ids as labels
    mapping = {int(k): int(v) for k, v in (meta.get("label_to_cat_id") or {}).items()}
    mapping = mapping or {label: label for label in range(1, max(num_classes, 1))}
    predictor = InstancePredictor(model)
    out = Path(args.out)
    results: dict[str, list] = {"bbox": [], "segm": []}
    files = _image_files(args.inputs)
    for image_id, path in enumerate(files, start=1):
        image = np.asarray(read_image(path))
        instances = predictor(image)
        save_instances(out / f"{path.stem}_instances.png", image, instances, names,
                       score_threshold=args.score_threshold)
        keep = instances.get("mask_scores", instances["scores"]) >= args.score_threshold
        kept = {k: v[keep] for k, v in instances.items()}
        for kind, entries in instances_to_coco_results([kept], [image_id], mapping).items():
            results[kind].extend({**e, "file_name": path.name} for e in entries)
        print(f"{path} -> {out / (path.stem + '_instances.png')} ({int(keep.sum())} instances)")
    for kind, entries in results.items():
        atomic_write_text(out / f"{kind}_results.json", json.dumps(entries))
    print(f"COCO results: {out / 'bbox_results.json'}, {out / 'segm_results.json'} (image_id = position in "
          "the input order, file_name beside it)")
    return 0


def _is_multi_person(model) -> bool:
    """Instance-level parsing: a detector-based model (Parsing R-CNN) or one that groups people (PGN)."""
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    return isinstance(model, GeneralizedRCNN) or hasattr(model, "predict_instances")


def _predict_multi_person(args, model, label_set) -> int:
    """``seglab predict`` for multi-person parsing: per image the part map (LIP colours), a picture with each
    person's parts coloured and each person outlined, the person-id map, and a JSON list of the people."""
    import numpy as np
    import torch
    from PIL import Image

    from seglab.data.io import read_image, write_label_png
    from seglab.data.transforms import image_tensor, normalize_image
    from seglab.engine.inference import model_device
    from seglab.utils import atomic_write, atomic_write_text
    from seglab.visualize import draw_multi_person_parsing

    out = Path(args.out)
    device = model_device(model)
    model.eval()
    for path in _image_files(args.inputs):
        image = np.asarray(read_image(path))
        with torch.no_grad():
            if hasattr(model, "predict_instances"):  # PGN: parsing + instance edges, grouped
                result = model.predict_instances(normalize_image(image)[None].to(device))[0]
                parsing = np.asarray(result["parsing"])
                human_ids = np.asarray(result["human_ids"])
                people = [{"id": int(h["id"]), "score": float(h["score"]), "box": [float(v) for v in h["box"]]}
                          for h in result["humans"]]
            else:  # Parsing R-CNN: detected people, each with its parsing map pasted back
                result = model([image_tensor(image).float().div(255).to(device)])[0]
                keep = (result["scores"] >= args.score_threshold).nonzero().flatten().tolist()
                parsing = np.zeros(image.shape[:2], dtype=np.int64)
                human_ids = np.zeros(image.shape[:2], dtype=np.int64)
                people = []
                for rank, i in enumerate(reversed(keep)):  # lowest score first: higher scores drawn on top
                    person = result["parsing"][i].cpu().numpy()
                    inside = person > 0
                    parsing[inside] = person[inside]
                    human_ids[inside] = len(keep) - rank
                for n, i in enumerate(keep, start=1):
                    people.append({"id": n, "score": float(result["scores"][i]),
                                   "box": [float(v) for v in result["boxes"][i]]})
        write_label_png(out / f"{path.stem}.png", parsing.astype(np.uint8), label_set)
        picture = Image.fromarray(draw_multi_person_parsing(image, parsing, human_ids, label_set.colors))
        atomic_write(out / f"{path.stem}_people.png", lambda tmp, p=picture: p.save(tmp, format="PNG"))
        ids = Image.fromarray(human_ids.clip(0, 255).astype(np.uint8))
        atomic_write(out / f"{path.stem}_human_ids.png", lambda tmp, p=ids: p.save(tmp, format="PNG"))
        atomic_write_text(out / f"{path.stem}_people.json", json.dumps(people, indent=1))
        print(f"{path} -> {out / (path.stem + '_people.png')} ({len(people)} people)")
    return 0


def _image_files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.is_file():
            files.append(item)
        else:
            raise SystemExit(f"seglab predict: {item}: no such file or folder")
    if not files:
        raise SystemExit(f"seglab predict: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(inputs)}")
    return files


def _save_npy(path: Path, array) -> None:
    import numpy as np

    with open(path, "wb") as fh:  # a file object: np.save would append .npy to the temporary name
        np.save(fh, array)


def _cmd_export(args) -> int:
    from seglab.export.onnx import export_weights

    path = export_weights(args.onnx, args.weights, config=args.config, model_name=args.model,
                          input_size=tuple(args.input_size), opset=args.opset)
    print(f"{args.weights} -> {path} (opset {args.opset}; dynamic batch, height and width)")
    return 0


def _predict_onnx(args) -> int:
    # torch-free: onnxruntime, NumPy and Pillow only, so a deployment can run without torch
    import numpy as np

    from seglab.data.io import read_image, write_label_png
    from seglab.data.palettes import get_label_set
    from seglab.export.ort import OnnxPredictor
    from seglab.visualize import save_overlay

    if args.weights or args.mode != "whole" or args.tta or args.mc_samples:
        raise SystemExit("seglab predict: --onnx runs whole-image inference only; drop --weights, --mode slide, "
                         "--tta and --mc-samples")
    predictor = OnnxPredictor(args.onnx)
    label_set = get_label_set(args.label_set or predictor.label_set or "voc")
    out = Path(args.out)
    for path in _image_files(args.inputs):
        image = np.asarray(read_image(path))
        label = predictor(image)
        write_label_png(out / f"{path.stem}.png", label.astype(np.uint8), label_set)
        save_overlay(out / f"{path.stem}_overlay.png", image, label, label_set.colors)
        print(f"{path} -> {out / (path.stem + '.png')}")
    return 0


def _cmd_predict(args) -> int:
    if args.onnx:
        return _predict_onnx(args)
    if not args.weights:
        raise SystemExit("seglab predict: pass --weights W (a torch model) or --onnx MODEL.onnx")
    import numpy as np

    from seglab.checkpoint import load_weights, read_metadata
    from seglab.data.io import read_image, write_label_png
    from seglab.data.palettes import get_label_set
    from seglab.engine.inference import Predictor
    from seglab.registry import create_model, model_info
    from seglab.utils import atomic_write
    from seglab.visualize import save_heatmap, save_legend, save_overlay

    meta = read_metadata(args.weights)
    name = args.model or meta.get("model")
    if not name:
        raise SystemExit(f"seglab predict: {args.weights} names no model; pass --model NAME")
    num_classes = args.num_classes or meta.get("num_classes")
    kwargs = dict(meta.get("model_kwargs") or {}) if name == meta.get("model") else {}
    if num_classes:
        kwargs["num_classes"] = int(num_classes)
    model = create_model(name, **kwargs)
    load_weights(model, args.weights)
    if model_info(name).task == "instance":
        return _predict_instances(args, model, {**meta, "num_classes": num_classes})
    label_set = get_label_set(args.label_set or meta.get("label_set") or "voc")
    if model_info(name).task == "parsing" or label_set.name in PARSING_LABEL_SETS:
        save_legend(Path(args.out) / "legend.png", label_set.classes, label_set.colors)
    if _is_multi_person(model):
        return _predict_multi_person(args, model, label_set)
    flip, scales = parse_tta(args.tta)
    crop = tuple(args.crop_size)
    if args.mc_samples < 0:
        raise SystemExit(f"seglab predict: --mc-samples must be >= 0, got {args.mc_samples}")
    try:
        predictor = Predictor(
            model, mode=args.mode, crop_size=crop, stride=tuple(c * 2 // 3 for c in crop), scales=scales,
            flip=flip, flip_pairs=label_set.flip_pairs, mc_samples=args.mc_samples,
            max_whole_pixels=args.max_whole_pixels or None, precision=args.precision, backend=args.backend,
            compile=args.compile,
        )
    except ValueError as exc:
        raise SystemExit(f"seglab predict: {exc}") from None
    out = Path(args.out)
    for path in _image_files(args.inputs):
        image = np.asarray(read_image(path))
        if args.mc_samples:
            result = predictor.predict_uncertainty(image)
            label = result["label"]
            for key in ("entropy", "variance"):
                atomic_write(out / f"{path.stem}_{key}.npy", lambda tmp, a=result[key]: _save_npy(tmp, a))
            num_classes = result["mean"].shape[0]
            save_heatmap(out / f"{path.stem}_uncertainty.png", result["entropy"] / math.log(max(num_classes, 2)),
                         vmax=1.0)
        else:
            label = predictor(image)
        write_label_png(out / f"{path.stem}.png", label.astype(np.uint8), label_set)
        save_overlay(out / f"{path.stem}_overlay.png", image, label, label_set.colors)
        print(f"{path} -> {out / (path.stem + '.png')}")
    return 0


def _cmd_convert_torchvision(args) -> int:
    from seglab.convert import convert_torchvision

    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    dst = convert_torchvision(args.name, args.src, args.dst, label_set=args.label_set, **kwargs)
    print(f"{args.src} -> {dst} (seglab {args.name})")
    return 0


def _cmd_convert_schp(args) -> int:
    from seglab.convert.schp import convert_schp

    dst = convert_schp(args.src, args.dst, dataset=args.dataset, model=args.model)
    print(f"{args.src} -> {dst} (seglab {args.model or 'schp model'})")
    return 0


def _cmd_convert_smp(args) -> int:
    from seglab.convert.smp import convert_smp

    dst = convert_smp(args.src, args.dst, model=args.model, label_set=args.label_set)
    print(f"{args.src} -> {dst} (seglab {args.model})")
    return 0


def _cmd_check_dataset(args) -> int:
    from seglab.data.check import check_dataset

    report = check_dataset(args.target, workers=args.workers, progress=True, label_set=args.label_set)
    print(report.to_text())
    return 0 if report.ok else 1


def _cmd_demo(args) -> int:
    if args.task == "parsing":
        from seglab.parsing_demo import run_parsing_demo

        run_parsing_demo(args.overrides)
        return 0
    if args.task == "instance":  # about 25 minutes on 2 CPU cores
        from seglab.instance_demo import train_instance_demo

        result = train_instance_demo(output_dir="runs")
        print(json.dumps(result, indent=1))
        return 0
    from seglab.demo import run_demo

    run_demo(args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seglab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("--task", choices=["semantic", "instance", "parsing"])
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train from a YAML config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.add_argument("--resume", action="store_true", help="continue from runs/<name>/checkpoints/last_state.pt")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate weights on the config's val split")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.add_argument("--weights", required=True)
    p.add_argument("--mode", choices=["whole", "slide"])
    p.add_argument("--tta", help="e.g. flip,scales=0.75,1,1.25")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--results-dir", help="instance models: where the COCO results JSON go (default: the run folder)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="write label PNGs and overlays for images")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--weights", help="weights file (or --onnx)")
    p.add_argument("--onnx", metavar="MODEL.onnx", help="run an exported ONNX file with onnxruntime (no torch)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", help="model name (default: the one recorded in the weights file)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--label-set", help="palette/label set name (default: recorded in the weights, else voc)")
    p.add_argument("--mode", choices=["whole", "slide"], default="whole")
    p.add_argument("--crop-size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--tta", help="e.g. flip,scales=0.75,1,1.25")
    p.add_argument("--mc-samples", type=int, default=0, metavar="N",
                   help="Monte Carlo dropout passes (models with dropout, e.g. bayesian_segnet_vgg16); also writes "
                        "<stem>_entropy.npy, <stem>_variance.npy and an <stem>_uncertainty.png heat map")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="instance models: draw and write instances scoring at least this (default 0.5)")
    p.add_argument("--max-whole-pixels", type=int, default=2048 * 2048,
                   help="semantic models in whole mode: larger images are inferred by sliding window "
                        "(default 2048*2048; 0 = never)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="torch backend: bf16 autocast where the CPU supports it (default fp32)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="torch (on CPU: BatchNorm folded, channels-last) or onnxruntime (exports to a temporary ONNX)")
    p.add_argument("--compile", action="store_true",
                   help="torch backend: also torch.compile the model (needs a C++ compiler; each new image size "
                        "compiles first, so it pays off for many images of one size)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export a semantic model to ONNX (dynamic batch, height and width)")
    p.add_argument("config", nargs="?", help="config YAML (default: the model recorded in the weights file)")
    p.add_argument("--weights", required=True)
    p.add_argument("--onnx", required=True, metavar="MODEL.onnx", help="output ONNX file")
    p.add_argument("--model", help="model name (overrides the config's or the weights')")
    p.add_argument("--input-size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"),
                   help="size traced (the exported graph takes any size)")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("convert", help="convert another library's checkpoint to a seglab weights file")
    convert = p.add_subparsers(dest="source", required=True)
    p = convert.add_parser("torchvision", help="a torchvision segmentation state dict (.pth or .safetensors)")
    p.add_argument("name", help="model name, e.g. deeplabv3_resnet50")
    p.add_argument("src", help="torchvision state dict file")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--num-classes", type=int, help="default: read from the checkpoint's classifier")
    p.add_argument("--label-set", default="voc", help="label set recorded in the weights (default: voc)")
    p.set_defaults(func=_cmd_convert_torchvision)
    p = convert.add_parser("schp", help="a checkpoint released with SCHP (Self-Correction for Human Parsing)")
    p.add_argument("src", help="SCHP .pth file, e.g. exp-schp-201908261155-lip.pth")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--dataset", choices=["lip", "atr", "pascal_person_part"], help="default: from the class count")
    p.add_argument("--model", choices=["schp_resnet101", "schp_resnet50", "schp_resnet18"],
                   help="seglab model (default: the depth the checkpoint's keys show; schp_resnet101 for SCHP's files)")
    p.set_defaults(func=_cmd_convert_schp)
    p = convert.add_parser("smp", help="a segmentation_models_pytorch Unet (ResNet encoder) state dict")
    p.add_argument("src", help="smp state dict file (.pth or .safetensors)")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--model", choices=["unet_resnet18", "unet_resnet34", "unet_resnet50"], default="unet_resnet34",
                   help="seglab model matching the smp encoder (default: unet_resnet34)")
    p.add_argument("--label-set", help="label set recorded in the weights (default: none)")
    p.set_defaults(func=_cmd_convert_smp)

    p = sub.add_parser("check-dataset", help="scan a dataset for bad files and print label statistics")
    p.add_argument("target", metavar="CONFIG_OR_PATH", help="a config YAML or a dataset folder")
    p.add_argument("--workers", type=int, default=2, help="reader threads (default: 2)")
    p.add_argument("--label-set", help="label set for class count and names (default: config palette, else voc)")
    p.set_defaults(func=_cmd_check_dataset)

    p = sub.add_parser("demo", help="generate demo data, train, evaluate and predict")
    p.add_argument("overrides", nargs="*", help="key.sub=value applied to the demo config")
    p.add_argument("--task", choices=["semantic", "parsing", "instance"], default="semantic",
                   help="semantic: U-Net on the demo shapes (default); parsing: SCHP on synthetic people; "
                        "instance: Mask R-CNN on the demo shapes (about 25 CPU minutes)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("plot", help="draw a run's loss/lr, val mIoU, per-class IoU and confusion PNGs")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder holding metrics.jsonl (and config.yaml)")
    p.add_argument("--out", help="folder for the PNGs (default: RUN_DIR/plots)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("pseudo-label", help="Naive-Student: label unlabelled images with a teacher (TTA, threshold)")
    p.add_argument("config", help="the teacher's config (model, palette, eval mode)")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.add_argument("--weights", required=True, help="the teacher's weights")
    p.add_argument("--images", required=True, help="folder of unlabelled images")
    p.add_argument("--out", required=True, help="output folder: images/ and masks/ (the folder dataset layout)")
    p.add_argument("--threshold", type=float, default=0.7, help="pixels less confident than this become 255")
    p.add_argument("--tta", help="default: flip,scales=0.5,0.75,1,1.25,1.5,1.75 (the paper's)")
    p.set_defaults(func=_cmd_pseudo_label)

    p = sub.add_parser("naive-student", help="Naive-Student: teacher, pseudo-labels, student; repeated")
    p.add_argument("config", help="config of the labelled data, model and schedule")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.add_argument("--unlabelled", required=True, help="folder of unlabelled images")
    p.add_argument("--rounds", type=int, required=True, help="student generations")
    p.add_argument("--teacher-weights", help="skip training the first teacher: use these weights")
    p.add_argument("--work-dir", help="default: <output_dir>/<name>_naive_student")
    p.add_argument("--threshold", type=float, default=0.7, help="pixels less confident than this become 255")
    p.set_defaults(func=_cmd_naive_student)
    return parser


def _cmd_pseudo_label(args) -> int:
    from seglab.checkpoint import load_weights
    from seglab.config import load_config
    from seglab.methods.naive_student import PAPER_SCALES, pseudo_label
    from seglab.registry import create_model
    from seglab.utils import resolve_device

    cfg = load_config(args.config, args.overrides)
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
    load_weights(model, args.weights)
    flip, scales = parse_tta(args.tta) if args.tta else (True, PAPER_SCALES)
    e = cfg.eval
    stats = pseudo_label(
        model.to(resolve_device(cfg.train.device)), Path(args.images), args.out, label_set=cfg.data.palette,
        scales=scales, flip=flip, threshold=args.threshold, mode=e.mode, crop_size=tuple(e.crop_size),
        stride=tuple(e.stride),
    )
    print(f"{stats.images} pseudo-labels in {args.out}: {100 * stats.labelled_fraction:.1f}% of pixels labelled, "
          f"pixels per class {stats.class_pixels}")
    return 0


def _cmd_naive_student(args) -> int:
    from seglab.config import load_config
    from seglab.methods.naive_student import naive_student

    cfg = load_config(args.config, args.overrides)
    work_dir = Path(args.work_dir) if args.work_dir else Path(cfg.output_dir) / f"{cfg.name}_naive_student"
    results = naive_student(cfg, unlabelled=Path(args.unlabelled), rounds=args.rounds, work_dir=work_dir,
                            teacher_weights=args.teacher_weights, threshold=args.threshold, progress=True)
    for r in results:
        print(f"round {r.round} {r.role}: val mIoU {r.val_mIoU:.4f} ({r.train_images} training images)")
    print(f"record: {work_dir / 'naive_student.json'}")
    return 0


def _cmd_plot(args) -> int:
    from seglab.visualize import plot_run

    try:
        paths = plot_run(args.run_dir, args.out)
    except ValueError as exc:
        raise SystemExit(f"seglab plot: error: {exc}") from None
    for path in paths:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    from seglab.errors import SeglabError

    parser = build_parser()
    # parse_known_args, so `key=value` overrides may also follow the --options
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except SeglabError as exc:
        print(f"seglab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
