"""ONNX export of Parsing R-CNN at a fixed size: onnxruntime reproduces PyTorch's boxes, scores and pasted part
maps with the detection count left dynamic (4, 1 and 0 persons through one graph), the paste-back the tracer
keeps dynamic equals the eager paste, and the metadata names the task so OnnxPredictor refuses the file."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import seglab
from seglab.export import OnnxPredictor, export_onnx, read_onnx_metadata
from seglab.export.parsing_rcnn import OUTPUT_NAMES, ParsingRCNNExport, paste_parsing_loop
from seglab.models.parsing.parsing_rcnn import parsing_rcnn_resnet50_fpn, paste_parsing_in_image

SIZE = 128
SMALL = {  # 128 px in, the model does not resize; a high score threshold so images differ in person count
    "min_size": SIZE, "max_size": SIZE, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 30,
    "box_score_thresh": 0.9, "box_detections_per_img": 8,
}



def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, path): a seeded Parsing R-CNN (20 parts) exported at 128 x 128, once for the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = parsing_rcnn_resnet50_fpn(num_classes=20, **SMALL).eval()
        path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "prcnn.onnx", input_size=(SIZE, SIZE),
                           metadata={"model": "parsing_rcnn_resnet50_fpn"})
    finally:
        torch.set_num_threads(threads)
    return model, path


def test_parsing_rcnn_onnx_matches_pytorch_with_4_1_and_0_persons(exported):
    model, path = exported
    assert model.training is False and path.name == "prcnn.onnx" and not list(path.parent.glob(".*.tmp"))
    session = _session(path)
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    assert session.get_inputs()[0].shape == [3, SIZE, SIZE]
    assert all(o.shape[0] == "detections" for o in session.get_outputs())
    traced = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))  # export_onnx's trace input
    with torch.no_grad():  # the traced form, run eagerly, is the model's eval forward bit for bit
        eager, wrapped = model([traced])[0], ParsingRCNNExport(model)([traced])
    assert all(torch.equal(wrapped[i], eager[k]) for i, k in enumerate(OUTPUT_NAMES))
    counts = []
    for image in (traced, torch.zeros(3, SIZE, SIZE), torch.full((3, SIZE, SIZE), 0.5)):
        with torch.no_grad():
            ref = model([image])[0]
        boxes, labels, scores, parsing, parsing_scores = session.run(None, {"image": image.numpy()})
        counts.append(len(boxes))
        assert boxes.shape == tuple(ref["boxes"].shape) and parsing.shape == tuple(ref["parsing"].shape)
        assert parsing.dtype == np.int64 and labels.dtype == np.int64
        np.testing.assert_allclose(boxes, ref["boxes"].numpy(), atol=1e-2)  # pixels; RoIAlign sums reorder
        np.testing.assert_array_equal(labels, ref["labels"].numpy())
        np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-4)
        np.testing.assert_allclose(parsing_scores, ref["parsing_scores"].numpy(), atol=1e-4)
        if len(boxes):
            # The argmax may flip where two parts' probabilities tie within float error (and a pixel centre
            # within the box difference of its edge); everywhere else the labels are equal.
            assert (parsing == ref["parsing"].numpy()).mean() >= 0.999
            assert len(np.unique(parsing)) > 3  # real part maps, not all background
    assert counts == [4, 1, 0]  # one graph, three detection counts (the trace saw 4)


def test_metadata_names_the_task_and_onnx_predictor_refuses_the_file(exported):
    _, path = exported
    assert read_onnx_metadata(path) == {"model": "parsing_rcnn_resnet50_fpn", "task": "parsing_instance",
                                        "input_size": [SIZE, SIZE]}
    assert seglab.model_info("parsing_rcnn_resnet50_fpn").task == "parsing"
    with pytest.raises(seglab.CheckpointError, match="prcnn.onnx: metadata task 'parsing_instance'.*semantic"):
        OnnxPredictor(path)


def test_loop_paste_equals_the_eager_paste_and_hand_computed_box_pixels():
    probs = torch.full((1, 4, 8, 8), 0.1)
    probs[:, 2] = 0.7  # part 2 wins everywhere inside the box
    box = torch.tensor([[3.2, 4.7, 50.1, 60.9]])
    pasted = paste_parsing_loop(probs, box, 48, 64)
    # Pixel centres inside the box: columns ceil(3.2 - 0.5) = 3 .. floor(50.1 - 0.5) = 49, rows 5 .. 47 (clipped).
    expected = torch.zeros(1, 48, 64, dtype=torch.int64)
    expected[0, 5:48, 3:50] = 2
    assert torch.equal(pasted, expected)
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 5, 16, 16, generator=g).softmax(1)
    boxes = torch.tensor([[3.2, 4.7, 50.1, 60.9], [0, 0, 64, 48], [10.5, 10.5, 10.5, 20], [60.2, 40, 63.9, 47.9],
                          [20.4999, 3.5, 20.6, 3.51], [-3, -2, 70, 80]])
    assert torch.equal(paste_parsing_loop(probs, boxes, 48, 64), paste_parsing_in_image(probs, boxes, (48, 64)))


class _Paste(nn.Module):
    def forward(self, probs, boxes):
        return paste_parsing_loop(probs, boxes, 48, 64)


def test_traced_paste_keeps_the_detection_count_dynamic(tmp_path):
    """Traced with 3 persons, run with 0, 1 and 6: an ONNX Loop, equal to the eager paste."""
    g = torch.Generator().manual_seed(0)

    def persons(n):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([50.0, 36.0])
        wh = torch.rand(n, 2, generator=g) * 30 + 1
        return torch.rand(n, 5, 16, 16, generator=g).softmax(1), torch.cat([xy, xy + wh], dim=1)

    path = tmp_path / "paste.onnx"
    axes = {0: "detections"}
    torch.onnx.export(_Paste(), persons(3), str(path), input_names=["probs", "boxes"], output_names=["parsing"],
                      opset_version=17, dynamic_axes={"probs": axes, "boxes": axes, "parsing": axes}, dynamo=False)
    assert "Loop" in {node.op_type for node in onnx.load(str(path)).graph.node}
    session = _session(path)
    for n in (0, 1, 6):
        probs, boxes = persons(n)
        (out,) = session.run(None, {"probs": probs.numpy(), "boxes": boxes.numpy()})
        ref = paste_parsing_in_image(probs, boxes, (48, 64)).numpy()
        assert out.shape == (n, 48, 64)
        if n:
            assert (out == ref).mean() >= 0.999
            assert (ref > 0).mean() > 0.05  # boxes of 1-31 px cover a real share of the 48 x 64 image
