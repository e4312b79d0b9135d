"""ONNX export and the torch-free onnxruntime predictor: onnxruntime reproduces PyTorch's logits at sizes other
than the traced one, the metadata travels in the file, and ``seglab predict --onnx`` runs without torch. The
export-friendly max-unpooling and adaptive pooling of seglab.models.layers equal torch's functions."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import seglab
from seglab.data.datasets.demo import render_scene
from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_image
from seglab.engine.inference import Predictor
from seglab.export import ExportError, OnnxPredictor, export_onnx, read_onnx_metadata
from seglab.export import ort as seglab_ort
from seglab.models.layers import AdaptiveAvgPool2d, MaxUnpool2d, adaptive_avg_pool2d, max_unpool2d
from seglab.models.semantic.upernet import PyramidPoolingModule
from seglab.tasks import task_of

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(1, 3, 64, 96), (2, 3, 96, 64)]  # neither is the traced 64x64: height and width are really dynamic
FAST_MODELS = {
    "unet": {"base_width": 8},
    "bisenetv2": {},
    "bisenetv1_resnet18": {},
    "lraspp_mobilenet_v3_large": {},
    "deeplabv3_mobilenet_v3_large": {},
    "enet": {},  # max-unpooling as a scatter (ScatterElements)
    "segnet_vgg16": {},  # five unpoolings at odd sizes (ceil-mode pools)
    "schp_resnet18": {"head_width": 32},  # parsing: PSP's adaptive pooling at a dynamic size
    "pgn_resnet50": {"width": 32},  # parsing: pyramid pooling whose kernel follows the input size
}
ODD_SIZES = [(7, 9), (13, 5), (17, 23), (33, 17), (1, 1)]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = model(x)
    return (out["out"] if isinstance(out, dict) else out).numpy()


def _max_error(model: nn.Module, session: ort.InferenceSession, shape: tuple[int, ...]) -> tuple[float, float]:
    """(max |onnxruntime - torch|, max |torch|) on a random input of ``shape``."""
    x = torch.randn(*shape)
    ref = _torch_logits(model, x)
    out = session.run(["logits"], {"image": x.numpy()})[0]
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max()), float(np.abs(ref).max())


@pytest.mark.parametrize("name", sorted(FAST_MODELS))
def test_onnxruntime_matches_pytorch_at_two_sizes(name, tmp_path):
    model = seglab.create_model(name, num_classes=5, **FAST_MODELS[name]).eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx", input_size=(64, 64), metadata={"model": name})
    assert path == tmp_path / f"{name}.onnx" and not list(tmp_path.glob(".*.tmp"))  # atomic: no stray temp file
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    session = _session(path)
    for shape in SIZES:
        error, scale = _max_error(model, session, shape)
        assert error <= 1e-4 * max(scale, 1e-3), (name, shape, error, scale)  # 1e-4 relative to the logit scale


def test_metadata_round_trip(tmp_path):
    model = seglab.create_model("bisenetv2", num_classes=5).eval()
    extra = {"model": "bisenetv2", "label_set": "demo_shapes", "model_kwargs": {"num_classes": 5}}
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(64, 64), metadata=extra)
    expected = {"model": "bisenetv2", "num_classes": 5, "label_set": "demo_shapes",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "model_kwargs": {"num_classes": 5}}
    assert read_onnx_metadata(path) == expected
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["num_classes"]) == 5 and json.loads(props["mean"]) == [0.485, 0.456, 0.406]
    predictor = OnnxPredictor(path)
    assert predictor.metadata == expected
    assert (predictor.num_classes, predictor.label_set) == (5, "demo_shapes")


def test_numpy_normalisation_equals_torch():
    assert seglab_ort.IMAGENET_MEAN == IMAGENET_MEAN and seglab_ort.IMAGENET_STD == IMAGENET_STD
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    ours = seglab_ort.normalize(image, IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_array_equal(ours, normalize_image(image).numpy())
    # hand-computed: pixel value 255 in the red channel -> (1 - 0.485) / 0.229
    assert ours.shape == (3, 7, 5)
    white = seglab_ort.normalize(np.full((1, 1, 3), 255, np.uint8), IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_allclose(white[:, 0, 0], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225],
                               rtol=1e-6)


def test_softmax_against_hand_values():
    logits = np.array([[[0.0]], [[np.log(3.0)]], [[1000.0]]], dtype=np.float32)[:2]  # K=2: probs 1/4, 3/4
    np.testing.assert_allclose(seglab_ort.softmax(logits, axis=0)[:, 0, 0], [0.25, 0.75], rtol=1e-6)
    big = np.array([[[1000.0]], [[1000.0 + np.log(3.0)]]], dtype=np.float32)  # stable: no overflow
    np.testing.assert_allclose(seglab_ort.softmax(big, axis=0)[:, 0, 0], [0.25, 0.75], rtol=1e-3)


def test_onnx_predictor_equals_predictor_on_a_demo_image(tmp_path):
    model = seglab.create_model("unet", num_classes=5, base_width=8).eval()
    # scale the classifier so the random model's classes are well separated, as a trained model's are
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    image = render_scene(np.random.default_rng(0), 96)[0]
    path = export_onnx(model, tmp_path / "unet.onnx", input_size=(64, 64), metadata={"model": "unet"})
    onnx_predictor, predictor = OnnxPredictor(path), Predictor(model)
    probs = onnx_predictor.predict_probs(image)
    assert probs.shape == (5, 96, 96) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, predictor.predict_probs(image).numpy(), atol=1e-5)
    labels = onnx_predictor(image)
    assert labels.dtype == np.int64 and labels.shape == (96, 96)
    np.testing.assert_array_equal(labels, predictor(image))
    assert len(np.unique(labels)) > 1  # a real comparison, not two constant maps
    np.testing.assert_array_equal(onnx_predictor(Image.fromarray(image)), labels)  # PIL input
    batch = onnx_predictor.predict_batch([image, image[:64, :80]])
    np.testing.assert_array_equal(batch[0], labels)
    np.testing.assert_array_equal(batch[1], predictor(image[:64, :80]))


class _TorchUnpool(nn.Module):
    """Max-pool then ``F.max_unpool2d``: torch's exporter has no symbolic for it (a deliberately unsupported op)."""

    def forward(self, x):
        pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        return F.max_unpool2d(pooled, indices, 2, 2, output_size=x.shape[-2:])


def test_unsupported_operator_names_model_and_op(tmp_path):
    with pytest.raises(ExportError, match=r"unpooler: cannot export to ONNX at opset 17: operator .*max_unpool2d"):
        export_onnx(_TorchUnpool(), tmp_path / "u.onnx", input_size=(64, 64), metadata={"model": "unpooler"})
    assert not (tmp_path / "u.onnx").exists()
    model = seglab.create_model("enet", num_classes=3)
    with pytest.raises(ExportError, match="opset must be an integer >= 17"):
        export_onnx(model, tmp_path / "enet.onnx", opset=13)


@pytest.mark.parametrize("size", ODD_SIZES)
def test_scatter_unpool_equals_max_unpool2d(size):
    x = torch.randn(2, 3, *size, requires_grad=True)
    pooled, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)  # SegNet's pools
    ref = F.max_unpool2d(pooled, indices, 2, 2, output_size=size)
    ours = max_unpool2d(pooled, indices, size)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert int((ours != 0).sum()) == pooled.numel()  # every pooled value lands once, zeros elsewhere
    grad = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, pooled, grad, retain_graph=True)
    (our_grad,) = torch.autograd.grad(ours, pooled, grad)
    torch.testing.assert_close(our_grad, ref_grad, rtol=0, atol=1e-6)  # the gradient gathers at the indices
    module = MaxUnpool2d(2)
    assert isinstance(module, nn.MaxUnpool2d)
    torch.testing.assert_close(module(pooled, indices, (2, 3, *size)), ref, rtol=0, atol=1e-6)


def test_scatter_unpool_by_hand():
    x = torch.tensor([[[[1.0, 5.0], [3.0, 2.0]]]])  # 2x2 -> one 2x2 window, max 5 at flat index 1
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    assert indices.item() == 1
    torch.testing.assert_close(max_unpool2d(pooled, indices, (2, 2)), torch.tensor([[[[0.0, 5.0], [0.0, 0.0]]]]))


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("output_size", [1, 2, 3, 6, (4, 5)])
def test_matrix_adaptive_pool_equals_adaptive_avg_pool2d(size, output_size):
    x = torch.randn(2, 4, *size)
    ref = F.adaptive_avg_pool2d(x, output_size)
    torch.testing.assert_close(adaptive_avg_pool2d(x, output_size), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(AdaptiveAvgPool2d(output_size)(x), ref, rtol=0, atol=1e-6)


def test_matrix_adaptive_pool_by_hand():
    # 5 rows into 3 bins: torch's edges [floor(5i/3), ceil(5(i+1)/3)) = [0, 2) [1, 4) [3, 5): overlapping bins
    x = torch.arange(5.0).view(1, 1, 5, 1)
    expected = torch.tensor([(0 + 1) / 2, (1 + 2 + 3) / 3, (3 + 4) / 2]).view(1, 1, 3, 1)
    torch.testing.assert_close(adaptive_avg_pool2d(x, (3, 1)), expected)


class _PPMOut(nn.Module):
    """UperNet's pyramid pooling module (scales 1, 2, 3, 6), its branches concatenated with the input."""

    def __init__(self) -> None:
        super().__init__()
        self.ppm = PyramidPoolingModule(3, 2)  # export_onnx traces a 3-channel image

    def forward(self, x):
        return torch.cat([x, *self.ppm(x)], dim=1)


def test_pyramid_pooling_exports_with_a_dynamic_size(tmp_path):
    """The PPM traced at 12x12 runs in onnxruntime at sizes whose bins differ (odd, smaller than 6, larger)."""
    model = _PPMOut().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    path = export_onnx(model, tmp_path / "ppm.onnx", input_size=(12, 12), metadata={"model": "ppm"})
    session = _session(path)
    for shape in [(1, 3, 7, 9), (2, 3, 13, 5), (1, 3, 23, 17), (1, 3, 4, 3)]:
        error, scale = _max_error(model, session, shape)
        assert error <= 1e-5 * max(scale, 1e-3), (shape, error, scale)


@pytest.mark.slow
def test_upernet_swin_t_round_trip(tmp_path):
    """UperNet Swin-T (about 20 s to export on one core): the PPM's adaptive pooling at a dynamic size."""
    model = seglab.create_model("upernet_swin_t", num_classes=5).eval()
    path = export_onnx(model, tmp_path / "upernet.onnx", input_size=(64, 64), metadata={"model": "upernet_swin_t"})
    session = _session(path)
    for shape in SIZES:
        error, scale = _max_error(model, session, shape)
        assert error <= 1e-4 * max(scale, 1e-3), (shape, error, scale)


def test_bad_onnx_file_raises_checkpoint_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(seglab.CheckpointError, match="bad.onnx"):
        OnnxPredictor(bad)
    with pytest.raises(seglab.CheckpointError, match="no such ONNX file"):
        OnnxPredictor(tmp_path / "missing.onnx")


def test_cli_export_then_predict_without_torch(tmp_path, capsys):
    from seglab.checkpoint import save_weights
    from seglab.cli import main
    from seglab.data.io import read_label

    model = seglab.create_model("unet", num_classes=5, base_width=8).eval()
    weights = save_weights(tmp_path / "w.safetensors", model.state_dict(), {
        "model": "unet", "num_classes": 5, "model_kwargs": {"base_width": 8}, "label_set": "demo_shapes"})
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(weights), "--onnx", str(onnx_path), "--input-size", "64", "64"]) == 0
    assert read_onnx_metadata(onnx_path)["label_set"] == "demo_shapes"
    image = render_scene(np.random.default_rng(1), 64)[0]
    Image.fromarray(image).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    script = (
        "import sys, runpy\n"
        f"sys.argv = ['seglab', 'predict', {str(tmp_path / 'scene.png')!r}, '--onnx', {str(onnx_path)!r}, "
        f"'--out', {str(out)!r}]\n"
        "import seglab, seglab.errors, seglab.data.palettes, seglab.data.io, seglab.export\n"
        "from seglab.export.ort import OnnxPredictor\n"
        "assert 'torch' not in sys.modules, 'importing seglab.export imported torch'\n"
        "try:\n    runpy.run_module('seglab', run_name='__main__')\n"
        "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "assert 'torch' not in sys.modules, 'seglab predict --onnx imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    label = read_label(out / "scene.png")
    np.testing.assert_array_equal(label, Predictor(model)(image))
    overlay = np.asarray(Image.open(out / "scene_overlay.png"))
    assert overlay.shape == (64, 64, 3)
    assert Image.open(out / "scene.png").mode == "P"


@pytest.mark.slow
def test_every_semantic_and_parsing_model_exports_or_names_the_operator(tmp_path):
    """The sweep: every registered semantic and dense parsing model exports and matches PyTorch at two sizes (a
    parsing model that cannot would have to fail with ExportError naming the operator)."""
    record = {}
    semantic = seglab.list_models(task="semantic")
    # Parsing R-CNN follows the detection contract (lists in, dicts out): not a dense-logits graph
    parsing = [n for n in seglab.list_models(task="parsing") if not task_of(n).detection]
    for name in semantic + parsing:
        model = seglab.create_model(name, num_classes=5).eval()
        with torch.no_grad():  # zero-initialised score layers (FCN) would make the comparison trivial
            for p in model.parameters():
                if not p.any():
                    p.normal_(0.0, 0.01)
        try:
            path = export_onnx(model, tmp_path / f"{name}.onnx", input_size=(64, 64), metadata={"model": name})
        except ExportError as exc:
            assert name not in semantic, str(exc)
            assert f"{name}: cannot export to ONNX at opset 17: operator" in str(exc), str(exc)
            record[name] = f"unsupported: {exc}"
            continue
        session = _session(path)
        for shape in SIZES:
            error, scale = _max_error(model, session, shape)
            assert error <= 1e-4 * max(scale, 1e-3), (name, shape, error, scale)
        record[name] = "exported"
        path.unlink()
    assert all(record[name] == "exported" for name in semantic)
    print(json.dumps(record, indent=1))


@pytest.mark.slow
def test_mask_rcnn_exports_at_a_fixed_size(tmp_path):
    model = seglab.create_model("mask_rcnn_resnet50_fpn", num_classes=5).eval()
    path = export_onnx(model, tmp_path / "mrcnn.onnx", input_size=(128, 128),
                       metadata={"model": "mask_rcnn_resnet50_fpn"})
    assert read_onnx_metadata(path)["task"] == "instance"
    x = torch.rand(3, 128, 128)
    with torch.no_grad():
        ref = model([x])[0]
    boxes, labels, scores, masks = _session(path).run(None, {"image": x.numpy()})
    assert boxes.shape == tuple(ref["boxes"].shape) and masks.shape == tuple(ref["masks"].shape)
    np.testing.assert_allclose(boxes, ref["boxes"].numpy(), atol=1e-2)  # pixels; RoIAlign sums reorder
    np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-4)
    np.testing.assert_array_equal(labels, ref["labels"].numpy())
