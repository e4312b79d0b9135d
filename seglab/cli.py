"""The ``seglab`` command: parses arguments, then calls the library (:mod:`seglab.jobs` and the modules below it).

Nothing here a Python user could not call: each command is a few lines that turn arguments into a library call
and print what it returns. Imports happen inside the commands, so ``seglab predict --onnx`` runs without torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _print_metrics(task, metrics, label_set, out: str | None) -> None:
    """The task's summary of ``metrics``, and the metrics as JSON at ``out`` if given."""
    from seglab.utils import atomic_write_text

    print(task.summary(metrics, label_set))
    if out:
        atomic_write_text(out, json.dumps(metrics.to_dict(), indent=2))
        print(f"metrics written to {out}")


def _inference_options(args, eval_cfg=None, flip_pairs=()):
    """The inference options of ``--mode``, ``--crop-size`` and ``--tta`` (over a config's eval section)."""
    from seglab.engine.inference import InferenceOptions

    if eval_cfg is not None:
        options = InferenceOptions.from_config(eval_cfg, flip_pairs)
    else:
        crop = tuple(args.crop_size)
        options = InferenceOptions(crop_size=crop, stride=tuple(c * 2 // 3 for c in crop),
                                   max_whole_pixels=args.max_whole_pixels or None)
    if getattr(args, "mode", None):
        options = options.replace(mode=args.mode)
    return options.with_tta(args.tta)


def _cmd_models(args) -> int:
    from rich.console import Console

    from seglab.model_table import models_rich_table

    Console(width=200).print(models_rich_table(args.task))
    return 0


def _cmd_configs(args) -> int:
    from seglab.recipes import list_recipes

    recipes = list_recipes(dataset=args.dataset, model=args.model)
    if not recipes:
        print("no packaged config matches")
        return 1
    width = max(len(r.name) for r in recipes)
    model_width = max(len(r.model) for r in recipes)
    for r in recipes:
        print(f"{r.name:<{width}}  {r.model:<{model_width}}  {r.dataset:<18}  {r.family}/{r.path.name}")
    print(f"\n{len(recipes)} configs; train one by name: seglab train {recipes[0].name} data.root=... "
          "(docs/recipes.md: sources and expected mIoU)")
    return 0


def _cmd_train(args) -> int:
    from seglab.config import load_config
    from seglab.jobs import train
    from seglab.recipes import resolve_config

    cfg = load_config(resolve_config(args.config), args.overrides)
    trainer, metrics = train(cfg, resume=args.resume, progress=True)
    if trainer.is_main:
        print(trainer.task.summary(metrics, trainer.label_set))
        print(f"run folder: {cfg.run_dir}")
    return 0


def _cmd_eval(args) -> int:
    from seglab.config import load_config
    from seglab.data import label_set_for
    from seglab.jobs import evaluate_predictions, evaluate_weights
    from seglab.recipes import resolve_config

    cfg = load_config(resolve_config(args.config), args.overrides)
    label_set = label_set_for(cfg.data)
    if args.pred_dir:
        if args.mode or args.tta or args.results_dir or args.model:
            raise SystemExit("seglab eval: --pred-dir scores label maps already written; --model, --mode, --tta "
                             "and --results-dir apply to a model")
        task, metrics = evaluate_predictions(cfg, args.pred_dir, allow_extra=args.allow_extra, progress=True)
        _print_metrics(task, metrics, label_set, args.out)
        return 0
    if args.allow_extra:
        raise SystemExit("seglab eval: --allow-extra applies to --pred-dir")
    options = _inference_options(args, cfg.eval, label_set.flip_pairs) if (args.mode or args.tta) else None
    if not (args.weights or args.model):
        raise SystemExit("seglab eval: pass --weights W, --model DIR_OR_HUB_ID (a model folder) or --pred-dir DIR")
    task, metrics = evaluate_weights(cfg, args.weights, model=args.model, options=options,
                                     results_dir=args.results_dir, progress=True)
    _print_metrics(task, metrics, label_set, args.out)
    for line in task.results_lines(Path(args.results_dir) if args.results_dir else cfg.run_dir / "coco_results"):
        print(line)
    return 0


def _cmd_predict(args) -> int:
    from seglab.errors import SeglabError

    if args.onnx:
        from seglab.jobs import predict_onnx

        if args.weights or args.model or args.mode or args.tta or args.mc_samples or args.annotations:
            raise SystemExit("seglab predict: --onnx runs whole-image inference only; drop --weights, --model, "
                             "--mode, --tta, --mc-samples and --annotations")
        lines = predict_onnx(args.onnx, args.inputs, args.out, label_set=args.label_set)
    else:
        from seglab.jobs import predict
        from seglab.tasks import PredictSettings

        if not (args.weights or args.model):
            raise SystemExit("seglab predict: pass --weights W, --model DIR_OR_HUB_ID (a model folder) or "
                             "--onnx MODEL.onnx")
        settings = PredictSettings(options=_inference_options(args), mc_samples=args.mc_samples,
                                   precision=args.precision, backend=args.backend, compile=args.compile,
                                   score_threshold=args.score_threshold, format=args.format,
                                   annotations=args.annotations)
        lines = predict(args.weights, args.inputs, args.out, settings, model_name=args.model,
                        num_classes=args.num_classes, label_set=args.label_set)
    try:
        for line in lines:
            print(line)
    except SeglabError:
        raise
    except ValueError as exc:  # an option the predictor refuses (a mode, TTA or precision it cannot run)
        raise SystemExit(f"seglab predict: {exc}") from None
    return 0


def _cmd_export(args) -> int:
    from seglab.export.onnx import export_weights

    if not (args.weights or args.model):
        raise SystemExit("seglab export: pass --weights W or --model DIR_OR_HUB_ID (a model folder)")
    path = export_weights(args.onnx, args.weights, config=args.config, model_name=args.model,
                          input_size=tuple(args.input_size), opset=args.opset)
    print(f"{args.weights or args.model} -> {path} (opset {args.opset}; dynamic batch, height and width)")
    return 0


def _cmd_convert(args) -> int:
    from seglab import convert

    out_dir = getattr(args, "out_dir", None)
    if getattr(args, "dst", None) is None:  # only --out-dir: the converter writes to a temporary file
        if not out_dir:
            raise SystemExit(f"seglab convert {args.source}: pass DST.safetensors, --out-dir DIR, or both")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            args.dst = str(Path(tmp) / "model.safetensors")
            args.dst_is_temporary = True
            return _cmd_convert(args)

    if args.source == "torchvision":
        kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
        kwargs.update({k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v})
        dst = convert.convert_torchvision(args.name, args.src, args.dst, label_set=args.label_set, **kwargs)
        name = args.name
    elif args.source == "schp":
        from seglab.checkpoint import read_metadata
        from seglab.convert.schp import convert_schp

        dst = convert_schp(args.src, args.dst, dataset=args.dataset, model=args.model,
                           inplace_abn=args.inplace_abn)
        name = read_metadata(dst)["model"]  # the model the converter resolved from the keys when --model is not given
    elif args.source == "bisenet":
        from seglab.checkpoint import read_metadata

        dst = convert.convert_bisenet(args.src, args.dst, model=args.model, label_set=args.label_set,
                                      dataset=args.dataset, fold_normalization=args.fold_normalization)
        name = read_metadata(dst)["model"]  # resolved from the keys when --model is not given
    elif args.source == "hf":
        from seglab.checkpoint import read_metadata

        dst = convert.convert_hf(args.src, args.dst, label_set=args.label_set)
        name = read_metadata(dst)["model"]  # chosen from the folder's config.json
    elif args.source == "mmseg":
        from seglab.checkpoint import read_metadata
        from seglab.convert.mmseg import convert_mmseg

        dst = convert_mmseg(args.config_name, args.src, args.dst, label_set=args.label_set)
        meta = read_metadata(dst)  # the model the config name gives, the classes the checkpoint has
        name = meta["model"]
        print(f"mmseg {args.config_name}: seglab {name}, {meta['num_classes']} classes (dataset "
              f"{meta['dataset'] or 'unknown'}), label set {meta.get('label_set', 'none')}")
    else:
        dst = convert.convert_smp(args.src, args.dst, model=args.model, label_set=args.label_set)
        name = args.model
    if not getattr(args, "dst_is_temporary", False):
        print(f"{args.src} -> {dst} (seglab {name})")
    if out_dir:
        from seglab.pretrained import save_pretrained_from_weights

        folder = save_pretrained_from_weights(dst, out_dir)
        print(f"{args.src} -> {folder}/ (seglab {name} model folder: seglab predict IMAGES --model {folder} --out OUT)")
    return 0


def _cmd_check_dataset(args) -> int:
    from seglab.data.check import check_dataset

    report = check_dataset(args.target, workers=args.workers, progress=True, label_set=args.label_set)
    print(report.to_text())
    return 0 if report.ok else 1


def _cmd_convert_data(args) -> int:
    from seglab.data.annotations import convert

    names = ("images", "labels", "palette", "classes", "crowd", "boxes")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    result = convert(args.format, args.src, args.dst, overwrite=args.overwrite, **options)
    print(result.summary())
    return 0


def _cmd_demo(args) -> int:
    from seglab.demos import run

    run(args.task, args.overrides)
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


def _cmd_pseudo_label(args) -> int:
    from seglab.config import load_config
    from seglab.data import label_set_for
    from seglab.methods.naive_student import PAPER_SCALES, pseudo_label
    from seglab.pretrained import load_model
    from seglab.recipes import resolve_config
    from seglab.utils import resolve_device

    cfg = load_config(resolve_config(args.config), args.overrides)
    label_set = label_set_for(cfg.data)
    options = _inference_options(args, cfg.eval, label_set.flip_pairs)
    if not args.tta:  # the paper's TTA
        options = options.replace(flip=True, scales=PAPER_SCALES)
    model = load_model(args.weights, config=cfg).to(resolve_device(cfg.train.device))
    stats = pseudo_label(model, Path(args.images), args.out, label_set=label_set, options=options,
                         threshold=args.threshold)
    print(f"{stats.images} pseudo-labels in {args.out}: {100 * stats.labelled_fraction:.1f}% of pixels labelled, "
          f"pixels per class {stats.class_pixels}")
    return 0


def _cmd_naive_student(args) -> int:
    from seglab.config import load_config
    from seglab.methods.naive_student import naive_student
    from seglab.recipes import resolve_config

    cfg = load_config(resolve_config(args.config), args.overrides)
    work_dir = Path(args.work_dir) if args.work_dir else Path(cfg.output_dir) / f"{cfg.name}_naive_student"
    results = naive_student(cfg, unlabelled=Path(args.unlabelled), rounds=args.rounds, work_dir=work_dir,
                            teacher_weights=args.teacher_weights, threshold=args.threshold, progress=True)
    for r in results:
        print(f"round {r.round} {r.role}: val mIoU {r.val_mIoU:.4f} ({r.train_images} training images)")
    print(f"record: {work_dir / 'naive_student.json'}")
    return 0


# -- the parser, one function per command -------------------------------------------------------------------


def _add_model(p, default: str) -> None:
    """``--model``: a registered model name (with --weights), a model folder, or a Hugging Face Hub id."""
    p.add_argument("--model", metavar="NAME_DIR_OR_HUB_ID",
                   help=f"a registered model name used with --weights (default: {default}); or a model folder "
                        "(a directory holding config.json, as seglab train and convert --out-dir write) or a Hugging "
                        "Face Hub id org/name[@revision] (needs seglab[hub]), which need no --weights")


def _add_out_dir(p) -> None:
    """``--out-dir DIR`` of a ``seglab convert`` subcommand: also write the converted weights as a model folder
    (:func:`_cmd_convert` builds it from DST once the converter has written it; DST may then be left out)."""
    p.add_argument("--out-dir", metavar="DIR",
                   help="also write a model folder (config.json, model.safetensors, README.md) that seglab "
                        "predict --model DIR and seglab.from_pretrained(DIR) load; DST may then be left out")


def _configs_parser(sub) -> None:
    p = sub.add_parser("configs", help="list the training configs that ship with seglab (the papers' recipes)")
    p.add_argument("--dataset", help="only those for this data.dataset, e.g. cityscapes")
    p.add_argument("--model", help="only those for this model, e.g. bisenetv2")
    p.set_defaults(func=_cmd_configs)


def _add_config(p, *, optional: bool = False) -> None:
    p.add_argument("config", nargs="?" if optional else None,
                   help="config YAML, or a packaged config's name (seglab configs lists them)")
    p.add_argument("overrides", nargs="*", help="key.sub=value")


def _train_eval_parsers(sub) -> None:
    p = sub.add_parser("train", help="train from a YAML config")
    _add_config(p)
    p.add_argument("--resume", action="store_true", help="continue from runs/<name>/checkpoints/last_state.pt")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate weights, or another tool's label maps, on the config's val split")
    _add_config(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--weights", help="weights file of the config's model")
    source.add_argument("--pred-dir", metavar="DIR",
                        help="score label PNGs instead, one per val sample: DIR/<id>.png (or the label's or image's "
                             "file name), class indices as seglab predict writes them; no model is run")
    p.add_argument("--model", metavar="NAME_DIR_OR_HUB_ID",
                   help="a model folder or Hugging Face Hub id (org/name[@revision]) to evaluate instead of --weights, "
                        "or a registered model name overriding the config's (with --weights)")
    p.add_argument("--allow-extra", action="store_true",
                   help="--pred-dir: warn about PNGs that match no sample instead of stopping")
    p.add_argument("--mode", choices=["whole", "slide", "affine"],
                   help="override eval.mode: whole, slide or affine (SCHP's procedure at eval.crop_size)")
    p.add_argument("--tta", help="e.g. flip,scales=0.75,1,1.25")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--results-dir", help="instance models: where the COCO results JSON go (default: the run folder)")
    p.set_defaults(func=_cmd_eval)


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="write label PNGs and overlays for images")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--weights", help="weights file (or --model DIR_OR_HUB_ID, or --onnx)")
    p.add_argument("--onnx", metavar="MODEL.onnx", help="run an exported ONNX file with onnxruntime (no torch)")
    p.add_argument("--out", required=True)
    _add_model(p, "the one recorded in the weights file")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--label-set", help="palette/label set name (default: recorded in the weights, else voc)")
    p.add_argument("--mode", choices=["whole", "slide", "affine"],
                   help="whole (default), sliding-window, or affine (SCHP's person-centric warp to --crop-size)")
    p.add_argument("--crop-size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--tta", help="e.g. flip,scales=0.75,1,1.25")
    p.add_argument("--mc-samples", type=int, default=0, metavar="N",
                   help="Monte Carlo dropout passes (models with dropout, e.g. bayesian_segnet_vgg16); also writes "
                        "<stem>_entropy.npy, <stem>_variance.npy and an <stem>_uncertainty.png heat map")
    p.add_argument("--score-threshold", type=float,
                   help="instance and multi-person models: draw and write (COCO results JSON included) the instances "
                        "or people scoring at least this (default: the model folder's score_threshold, else 0.5; "
                        "for COCO AP pass a low one, e.g. 0.05)")
    p.add_argument("--annotations", metavar="INSTANCES.json",
                   help="instance models: a COCO instances JSON whose image ids the results JSON takes, matched by "
                        "file name (an image it does not list is an error); default: ids 1, 2, ... in input order")
    p.add_argument("--max-whole-pixels", type=int, default=2048 * 2048,
                   help="semantic models in whole mode: larger images are inferred by sliding window "
                        "(default 2048*2048; 0 = never)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="torch backend: bf16 autocast where the device supports it, fp16 on CUDA (default fp32)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="torch (on CPU: BatchNorm folded, channels-last) or onnxruntime (exports to a temporary ONNX)")
    p.add_argument("--compile", action="store_true",
                   help="torch backend: also torch.compile the model (needs a C++ compiler; each new image size "
                        "compiles first, so it pays off for many images of one size)")
    p.add_argument("--format", choices=["seglab", "cityscapes"], default="seglab",
                   help="seglab: <stem>.png, overlay and legend; cityscapes: only <name>_labelIds.png, the train ids "
                        "mapped back to Cityscapes' label ids, as cityscapesScripts' evaluation reads them")
    p.set_defaults(func=_cmd_predict)


def _cmd_serve(args) -> int:
    from seglab.serve import serve

    if not (args.model or args.weights):
        raise SystemExit("seglab serve: pass --model DIR_OR_WEIGHTS (a model folder, Hub id, weights file or .onnx)")
    try:
        serve(args.model or args.weights, weights=args.weights if args.model else None, host=args.host,
              port=args.port, backend=args.backend, precision=args.precision, api_key=args.api_key,
              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
              max_body_bytes=args.max_body_mb * 1024 * 1024, max_pixels=args.max_pixels, timeout_s=args.timeout)
    except ImportError as exc:  # the serve extra (or onnxruntime for an ONNX file) is not installed
        raise SystemExit(f"seglab serve: {exc}") from None
    return 0


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (micro-batching, web page at /; the seglab[serve] extra)")
    p.add_argument("--model", help="a model folder, Hub id, seglab weights file or ONNX file (or a registered name "
                                   "with --weights)")
    p.add_argument("--weights", help="weights file for a registered --model name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="torch (CPU fast path) or onnxruntime (an .onnx --model runs without torch)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every endpoint but /healthz and the "
                                     "page (default: the SEGLAB_API_KEY environment variable)")
    p.add_argument("--max-batch", type=int, default=8, help="images (or sliding-window tiles) per model batch")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a request waits for its batch to fill while others are being read (a lone "
                        "request starts at once)")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond which the server answers 503")
    p.add_argument("--max-body-mb", type=int, default=32, help="request size limit in MiB (413 above)")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="image size limit in pixels (413 above)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (504 after)")
    p.set_defaults(func=_cmd_serve)


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a semantic model to ONNX (dynamic batch, height and width)")
    p.add_argument("config", nargs="?", help="config YAML (default: the model recorded in the weights file)")
    p.add_argument("--weights", help="weights file (or --model DIR_OR_HUB_ID)")
    p.add_argument("--onnx", required=True, metavar="MODEL.onnx", help="output ONNX file")
    _add_model(p, "the config's, else the one recorded in the weights file")
    p.add_argument("--input-size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"),
                   help="size traced (the exported graph takes any size)")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=_cmd_export)


def _convert_torchvision_parser(convert) -> None:
    p = convert.add_parser("torchvision", help="a torchvision segmentation or Mask R-CNN state dict (.pth or "
                                               ".safetensors)")
    p.add_argument("name", help="model name, e.g. deeplabv3_resnet50 or maskrcnn_resnet50_fpn")
    p.add_argument("src", help="torchvision state dict file")
    p.add_argument("dst", nargs="?", help="output .safetensors file (may be left out with --out-dir)")
    p.add_argument("--num-classes", type=int, help="default: read from the checkpoint's classifier")
    p.add_argument("--label-set", help="label set recorded in the weights (default: coco for 91-class detectors, "
                                       "whose labels are COCO category ids; voc for segmentation models)")
    p.add_argument("--min-size", type=int, help="detectors: the shorter side images are resized to, recorded and "
                                                "used when the model is rebuilt (default: the factory's, 800)")
    p.add_argument("--max-size", type=int, help="detectors: the longest side after resizing (default: the "
                                                "factory's, 1333)")
    _add_out_dir(p)
    p.set_defaults(func=_cmd_convert)


def _convert_schp_parser(convert) -> None:
    p = convert.add_parser("schp", help="a checkpoint released with SCHP (Self-Correction for Human Parsing)")
    p.add_argument("src", help="SCHP .pth file, e.g. exp-schp-201908261155-lip.pth")
    p.add_argument("dst", nargs="?", help="output .safetensors file (may be left out with --out-dir)")
    _add_out_dir(p)
    p.add_argument("--dataset", choices=["lip", "atr", "pascal_person_part"], help="default: from the class count")
    p.add_argument("--model", choices=["schp_resnet101", "schp_resnet50", "schp_resnet18"],
                   help="seglab model (default: the depth the checkpoint's keys show; schp_resnet101 for SCHP's files)")
    p.add_argument("--no-inplace-abn", dest="inplace_abn", action="store_false",
                   help="take the BatchNorm weights as they are instead of folding InPlaceABN's |weight| + 1e-5 "
                        "into them: for a file trained with plain BatchNorm, or one already converted for plain BN")
    p.set_defaults(func=_cmd_convert)


def _export_convert_parsers(sub) -> None:
    _export_parser(sub)
    p = sub.add_parser("convert", help="convert another library's checkpoint to a seglab weights file (and, with "
                                       "--out-dir, a model folder)")
    convert = p.add_subparsers(dest="source", required=True)
    _convert_torchvision_parser(convert)
    _convert_schp_parser(convert)
    p = convert.add_parser("smp", help="a segmentation_models_pytorch Unet (ResNet encoder) state dict")
    p.add_argument("src", help="smp state dict file (.pth or .safetensors)")
    p.add_argument("dst", nargs="?", help="output .safetensors file (may be left out with --out-dir)")
    _add_out_dir(p)
    p.add_argument("--model", choices=["unet_resnet18", "unet_resnet34", "unet_resnet50"], default="unet_resnet34",
                   help="seglab model matching the smp encoder (default: unet_resnet34)")
    p.add_argument("--label-set", help="label set recorded in the weights (default: none)")
    p.set_defaults(func=_cmd_convert)
    p = convert.add_parser("bisenet", help="a checkpoint released with CoinCheung/BiSeNet (BiSeNet v1 or v2)")
    p.add_argument("src", help="CoinCheung/BiSeNet .pth file, e.g. model_final_v2_city.pth")
    p.add_argument("dst", nargs="?", help="output .safetensors file (may be left out with --out-dir)")
    _add_out_dir(p)
    p.add_argument("--model", choices=["bisenetv1_resnet18", "bisenetv2"],
                   help="seglab model (default: the one the checkpoint's keys show)")
    p.add_argument("--dataset", choices=["cityscapes", "coco_stuff", "ade20k"],
                   help="its training set, whose mean/std are folded into the first convolutions so that the model "
                        "takes seglab's ImageNet-normalised input (default: from the class count, 19, 171 or 150)")
    p.add_argument("--label-set", help="label set recorded in the weights (default: the dataset's)")
    p.add_argument("--no-fold-normalization", dest="fold_normalization", action="store_false",
                   help="keep the first convolutions as they are (the model then expects CoinCheung's input "
                        "normalisation, not seglab's)")
    p.set_defaults(func=_cmd_convert)
    p = convert.add_parser("hf", help="a Hugging Face UperNet model folder (Swin-T/S/B or ConvNeXt-T/S/B backbone)")
    p.add_argument("src", help="folder with config.json and model.safetensors or pytorch_model.bin, e.g. a download "
                               "of openmmlab/upernet-convnext-tiny")
    p.add_argument("dst", nargs="?", help="output .safetensors file (may be left out with --out-dir)")
    _add_out_dir(p)
    p.add_argument("--label-set", help="label set recorded in the weights (default: ade20k when config.json's "
                                       "id2label holds ADE20K's 150 classes, else those names)")
    p.set_defaults(func=_cmd_convert)
    p = convert.add_parser("mmseg", help="an mmsegmentation checkpoint (UperNet-Swin, BiSeNet v1/v2, FCN, DeepLabv3, "
                                         "Semantic FPN on ResNet), read without running code from it")
    p.add_argument("config_name", metavar="CONFIG_NAME",
                   help="its mmseg config name, e.g. bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024 or "
                        "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512 (the checkpoint's file "
                        "name also works)")
    p.add_argument("src", help="mmseg .pth checkpoint")
    p.add_argument("dst", nargs="?", help="output .safetensors file (may be left out with --out-dir)")
    _add_out_dir(p)
    p.add_argument("--label-set", help="label set recorded in the weights (default: the config's dataset's)")
    p.set_defaults(func=_cmd_convert)


def _data_parsers(sub) -> None:
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


def _convert_data_parsers(sub) -> None:
    p = sub.add_parser("convert-data", help="turn an annotation tool's export into seglab's folder layout "
                                            "(images/, masks/, classes.txt)")
    p.add_argument("format", metavar="FORMAT",
                   choices=["coco", "yolo", "label-studio", "cvat-mask", "cvat-coco", "color-png"],
                   help="coco (instances JSON), yolo (Ultralytics YOLO-seg folder), label-studio (JSON export), "
                        "cvat-mask (Segmentation mask 1.1 folder), cvat-coco (COCO 1.0 folder), color-png "
                        "(images/ and colour-coded labels/ with --palette)")
    p.add_argument("src", metavar="SRC", help="the export: a JSON file (coco, label-studio) or a folder")
    p.add_argument("dst", metavar="DST", help="output folder (empty, or --overwrite)")
    p.add_argument("--images", help="folder of the images (default: where the format keeps them)")
    p.add_argument("--labels", help="color-png: folder of the label PNGs (default: SRC/labels, else SRC/masks)")
    p.add_argument("--palette", help="color-png: file of 'name #rrggbb' lines (line k = index k) or a label set name")
    p.add_argument("--classes", help="yolo, label-studio: class names file (or Label Studio's labelling config XML)")
    p.add_argument("--crowd", choices=["ignore", "class"],
                   help="coco, cvat-coco: iscrowd regions as 255 or as their class (default: ignore; cvat-coco class)")
    p.add_argument("--boxes", choices=["error", "mask"],
                   help="coco, cvat-coco: box-only annotations refused or painted (default: error; cvat-coco mask)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty DST, replacing its files")
    p.set_defaults(func=_cmd_convert_data)


def _naive_student_parsers(sub) -> None:
    p = sub.add_parser("pseudo-label", help="Naive-Student: label unlabelled images with a teacher (TTA, threshold)")
    _add_config(p)
    p.add_argument("--weights", required=True, help="the teacher's weights")
    p.add_argument("--images", required=True, help="folder of unlabelled images (sub-folders included)")
    p.add_argument("--out", required=True, help="output folder: images/ and masks/ (the folder dataset layout)")
    p.add_argument("--threshold", type=float, default=0.7, help="pixels less confident than this become 255")
    p.add_argument("--tta", help="default: flip,scales=0.5,0.75,1,1.25,1.5,1.75 (the paper's)")
    p.set_defaults(func=_cmd_pseudo_label)

    p = sub.add_parser("naive-student", help="Naive-Student: teacher, pseudo-labels, student; repeated")
    _add_config(p)
    p.add_argument("--unlabelled", required=True,
                   help="folder of unlabelled images, sub-folders included (Cityscapes: leftImg8bit_sequence/train)")
    p.add_argument("--rounds", type=int, required=True, help="student generations")
    p.add_argument("--teacher-weights", help="skip training the first teacher: use these weights")
    p.add_argument("--work-dir", help="default: <output_dir>/<name>_naive_student")
    p.add_argument("--threshold", type=float, default=0.7, help="pixels less confident than this become 255")
    p.set_defaults(func=_cmd_naive_student)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seglab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("--task", choices=["semantic", "instance", "parsing"])
    p.set_defaults(func=_cmd_models)
    _configs_parser(sub)
    _train_eval_parsers(sub)
    _predict_parser(sub)
    _serve_parser(sub)
    _export_convert_parsers(sub)
    _data_parsers(sub)
    _convert_data_parsers(sub)
    _naive_student_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from seglab.errors import PREEMPTED_EXIT_CODE, Preempted, SeglabError

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
    except Preempted as exc:  # SIGTERM/SIGINT in training: the state is saved; a scheduler may requeue on 75
        print(f"seglab {args.command}: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except SeglabError as exc:
        print(f"seglab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
