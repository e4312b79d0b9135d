"""seglab serve's HTTP API: every endpoint, every output kind against the model's own prediction, every kind of
bad input refused with its status and message while the server keeps serving, the API key, micro-batching, the
bounded queue (503) and the per-request timeout (504), and serving an ONNX file without torch."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

import seglab
from seglab.data.palettes import get_label_set
from seglab.serve.app import ServeSettings, create_app
from seglab.serve.batching import MicroBatcher, QueueFull
from seglab.serve.runner import InstanceRunner, PeopleRunner, SemanticRunner

TestClient = pytest.importorskip("fastapi.testclient").TestClient

ROOT = Path(__file__).resolve().parents[2]


class RedIsCat(nn.Module):
    """Class 8 (VOC's cat) where the red channel is above the image's mean red, else background: a prediction
    known without training. Records the batch size of every forward pass."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        if self.delay:
            time.sleep(self.delay)
        red = x[:, :1] - x[:, :1].mean(dim=(2, 3), keepdim=True)
        logits = torch.zeros(x.shape[0], 21, *x.shape[-2:])
        logits[:, 8:9] = red
        return logits


def picture(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 3)) * 30).astype(np.uint8)  # red below the mean, which the block lifts
    image[h // 4: h // 2, w // 4: 3 * w // 4, 0] = 250  # a red block
    return image


def encoded(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def expected_label(image: np.ndarray) -> np.ndarray:
    red = image[..., 0].astype(np.float64)
    return np.where(red > red.mean(), 8, 0)


def png_of(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


@pytest.fixture
def client_for():
    clients = []

    def make(runner, **settings):
        client = TestClient(create_app(runner, ServeSettings(**settings)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def voc_runner(model: nn.Module | None = None, **kwargs) -> SemanticRunner:
    return SemanticRunner(model or RedIsCat(), "red_is_cat", get_label_set("voc"), **kwargs)


def test_model_health_and_metrics_endpoints(client_for):
    client = client_for(voc_runner(), max_batch=4)
    assert client.get("/healthz").json() == {"status": "ok", "model": "red_is_cat"}
    card = client.get("/v1/model").json()
    assert card["task"] == "semantic" and card["num_classes"] == 21 and card["classes"][8] == "cat"
    assert card["colors"][8] == list(get_label_set("voc").colors[8])
    assert card["modes"] == ["whole", "slide"] and card["limits"]["max_batch"] == 4
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    client.post("/v1/segment", content=encoded(picture()), headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert 'seglab_requests_total{endpoint="/v1/segment",status="200"} 1.0' in text
    for name in ("seglab_batch_size_bucket", "seglab_queue_depth", "seglab_request_seconds_bucket",
                 'seglab_stage_seconds_bucket{le="0.005",stage="encode"}'):
        assert name in text


def test_every_semantic_output_matches_the_prediction(client_for):
    client = client_for(voc_runner())
    image = picture()
    label = expected_label(image)
    response = client.post("/v1/segment?outputs=png,rle,polygons,overlay&alpha=0.6", content=encoded(image),
                           headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["height"], body["width"], body["task"]) == (48, 64, "semantic")
    assert body["classes_present"] == [0, 8]
    png = png_of(body["png"])
    assert png.mode == "P"
    np.testing.assert_array_equal(np.asarray(png), label)
    overlay = np.asarray(png_of(body["overlay"]))
    assert overlay.shape == (48, 64, 3) and not np.array_equal(overlay, image)
    cat = np.asarray(get_label_set("voc").colors[8], dtype=np.float64)
    y, x = np.argwhere(label == 8)[0]
    np.testing.assert_allclose(overlay[y, x], np.rint(0.4 * image[y, x] + 0.6 * cat), atol=1)
    segments = {s["class_id"]: s for s in body["segments"]}
    assert [segments[c]["name"] for c in (0, 8)] == ["background", "cat"]
    for class_id, segment in segments.items():
        assert segment["pixels"] == int((label == class_id).sum())
        rle = {"size": segment["rle"]["size"], "counts": segment["rle"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle), label == class_id)
    (polygon,) = segments[8]["polygons"]  # the red block's outline
    xs, ys = polygon[0::2], polygon[1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (16, 47, 12, 23)
    assert body["timing_ms"]["encode"] >= 0


def test_multipart_jpeg_and_raw_bodies_agree_and_equal_the_predictor(client_for):
    model = seglab.create_model("bisenetv2", num_classes=21).eval()
    client = client_for(voc_runner(model))
    image = picture(64, 96, seed=3)
    raw = client.post("/v1/segment", content=encoded(image), headers={"content-type": "application/octet-stream"})
    form = client.post("/v1/segment", files={"image": ("photo.png", encoded(image), "image/png")})
    assert raw.status_code == form.status_code == 200
    assert raw.json()["png"] == form.json()["png"]
    np.testing.assert_array_equal(np.asarray(png_of(raw.json()["png"])), seglab.Predictor(model)(image))
    jpeg = client.post("/v1/segment", content=encoded(image, "JPEG"), headers={"content-type": "image/jpeg"})
    assert jpeg.status_code == 200 and jpeg.json()["width"] == 96
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: stored turned 90 degrees; a viewer rotates it clockwise to show it upright
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", exif=exif)
    upright = client.post("/v1/segment", content=buffer.getvalue(), headers={"content-type": "image/png"}).json()
    assert (upright["height"], upright["width"]) == (96, 64)
    np.testing.assert_array_equal(np.asarray(png_of(upright["png"])),
                                  seglab.Predictor(model)(np.ascontiguousarray(np.rot90(image, k=-1))))


def test_slide_and_tta_run_as_the_predictor_with_tiles_batched(client_for):
    model = RedIsCat()
    runner = voc_runner(model, inference={"crop_size": [32, 32], "stride": [16, 16]}, window_batch=4)
    client = client_for(runner)
    image = picture(48, 80, seed=5)
    response = client.post("/v1/segment?mode=slide&flip=true&scales=1,1.5", content=encoded(image),
                           headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    expected = seglab.Predictor(RedIsCat(), mode="slide", crop_size=32, stride=16, tta="flip,scales=1,1.5")(image)
    np.testing.assert_array_equal(np.asarray(png_of(response.json()["png"])), expected)
    assert max(model.batches) == 4  # 8 windows at scale 1 (2 rows x 4 columns) ran as two batches of 4
    # a model folder evaluated by sliding window is served that way by default
    folder_like = voc_runner(RedIsCat(), inference={"crop_size": [32, 32], "stride": [16, 16]},
                             preprocessing={"mode": "slide", "crop_size": [32, 32], "stride": [16, 16]})
    client = client_for(folder_like)
    assert client.get("/v1/model").json()["default_mode"] == "slide"
    response = client.post("/v1/segment", content=encoded(image), headers={"content-type": "image/png"})
    expected = seglab.Predictor(RedIsCat(), mode="slide", crop_size=32, stride=16)(image)
    np.testing.assert_array_equal(np.asarray(png_of(response.json()["png"])), expected)


def test_bad_requests_get_named_4xx_errors_and_the_server_keeps_serving(client_for):
    client = client_for(voc_runner(), max_body_bytes=200_000, max_pixels=1_000_000)
    good = encoded(picture())
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")  # 400 megapixels in a few kilobytes
    assert len(bomb.getvalue()) < 200_000
    wide = io.BytesIO()
    Image.new("1", (4_000, 1_000)).save(wide, format="PNG")  # under Pillow's own limit, over the server's
    png = {"content-type": "image/png"}
    cases = [
        (dict(content=b"", headers=png), 400, "is empty"),
        (dict(content=b"GIF? no, plain text", headers=png), 400, "not an image"),
        (dict(content=good[: len(good) // 2], headers=png), 400, "truncated"),
        (dict(content=bomb.getvalue(), headers=png), 413, "limit is 1000000 pixels"),
        (dict(content=wide.getvalue(), headers=png), 413, "4000x1000 = 4000000 pixels"),
        (dict(content=b"\0" * 200_001, headers=png), 413, "200001 bytes"),
        (dict(content=good, headers={"content-type": "text/plain"}), 415, "text/plain"),
        (dict(content=good, headers={"content-type": ""}), 415, "Content-Type"),
        (dict(files={"note": (None, "a field, not a file")}), 400, "no file"),
    ]
    for kwargs, status, words in cases:
        response = client.post("/v1/segment", **kwargs)
        assert response.status_code == status, (words, response.text)
        assert words in response.json()["error"] and response.json()["status"] == status
    for query, words in [("outputs=jpeg", "outputs='jpeg'"), ("mode=affine", "mode='affine'"),
                         ("scales=0.1", "scales='0.1'"), ("scales=a,b", "comma-separated numbers"),
                         ("alpha=2", "alpha='2'"), ("flip=maybe", "flip='maybe'"), ("colour=red", "colour")]:
        response = client.post(f"/v1/segment?{query}", content=good, headers=png)
        assert response.status_code == 400 and words in response.json()["error"], (query, response.text)
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/segment").status_code == 405
    response = client.post("/v1/segment?outputs=rle", content=good, headers=png)
    assert response.status_code == 200 and response.json()["classes_present"] == [0, 8]
    metrics = client.get("/metrics").text
    assert 'seglab_request_errors_total{status="400"} 11.0' in metrics
    assert 'seglab_request_errors_total{status="413"} 3.0' in metrics


def test_api_key_guards_every_endpoint_but_health_and_page(client_for):
    client = client_for(voc_runner(), api_key="s3cret")
    body, png = encoded(picture()), {"content-type": "image/png"}
    for method, path in [("get", "/v1/model"), ("get", "/metrics"), ("post", "/v1/segment")]:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            response = getattr(client, method)(path, headers={**png, **headers}, content=body) if method == "post" \
                else getattr(client, method)(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer" and "API key" in response.json()["error"]
    auth = {"authorization": "Bearer s3cret"}
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
    assert client.get("/v1/model", headers=auth).status_code == 200
    assert client.post("/v1/segment", content=body, headers={**png, **auth}).status_code == 200


def test_non_loopback_without_key_warns(monkeypatch, caplog):
    import uvicorn

    from seglab.serve import is_loopback, serve

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    monkeypatch.delenv("SEGLAB_API_KEY", raising=False)
    monkeypatch.setattr("seglab.serve.runner.load_runner", lambda *a, **k: voc_runner())
    with caplog.at_level("WARNING"):
        serve("unused", host="0.0.0.0", port=8123)
    assert started == [{"host": "0.0.0.0", "port": 8123, "log_level": "warning"}]
    assert "without an API key" in caplog.text
    caplog.clear()
    monkeypatch.setenv("SEGLAB_API_KEY", "k")
    with caplog.at_level("WARNING"):
        serve("unused", host="0.0.0.0")
    assert "without an API key" not in caplog.text


def post_concurrently(client, bodies, query="", **headers):
    results = [None] * len(bodies)

    def send(i):
        results[i] = client.post(f"/v1/segment{query}", content=bodies[i],
                                 headers={"content-type": "image/png", **headers})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_requests_of_one_size_share_batches(client_for):
    model = RedIsCat(delay=0.5)
    client = client_for(voc_runner(model), max_batch=4, max_wait_ms=500)
    first = threading.Thread(target=post_concurrently, args=(client, [encoded(picture(40, 40))]))
    first.start()  # a 40x40 image keeps the model busy for 0.5 s ...
    time.sleep(0.2)
    bodies = [encoded(picture(seed=i)) for i in range(4)]
    responses = post_concurrently(client, bodies)  # ... while four 48x64 ones arrive: they run as one batch
    first.join()
    assert [r.status_code for r in responses] == [200] * 4
    for body, response in zip(bodies, responses, strict=True):
        image = np.asarray(Image.open(io.BytesIO(body)))
        np.testing.assert_array_equal(np.asarray(png_of(response.json()["png"])), expected_label(image))
    assert model.batches == [1, 4]
    assert "seglab_batch_size_bucket{le=\"4.0\"} 2.0" in client.get("/metrics").text

def test_full_queue_answers_503_and_slow_requests_504(client_for):
    client = client_for(voc_runner(RedIsCat(delay=0.5)), max_batch=1, max_queue=1, max_wait_ms=0)
    responses = post_concurrently(client, [encoded(picture(seed=i)) for i in range(6)])
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    model = RedIsCat(delay=0.6)
    slow = client_for(voc_runner(model), timeout_s=0.2, max_batch=1)
    responses = post_concurrently(slow, [encoded(picture()), encoded(picture(40, 40))])
    for response in responses:
        assert response.status_code == 504
        assert "timeout of 0.2 s (timed out waiting for the model)" in response.json()["error"]
    time.sleep(1.0)
    assert model.batches == [1]  # the request that timed out while queued was dropped, never run
    assert slow.get("/healthz").status_code == 200


def test_micro_batcher_policy():
    seen = []

    def run(key, payloads):
        seen.append((key, list(payloads)))
        return [p * 10 for p in payloads]

    batcher = MicroBatcher(run, max_batch=3, max_wait_s=0.3, max_queue=10)
    for _ in range(6):
        batcher.announce()  # six requests on their way: the first batch waits for its companions
    futures = [batcher.submit("a" if i != 2 else "b", i, announced=True) for i in range(6)]
    assert [f.result(5) for f in futures] == [0, 10, 20, 30, 40, 50]
    assert seen[0] == ("a", [0, 1, 3]) and ("b", [2]) in seen and ("a", [4, 5]) in seen
    batcher.stop()

    lone = MicroBatcher(run, max_batch=8, max_wait_s=30, max_queue=10)
    start = time.monotonic()
    assert lone.submit("c", 7).result(5) == 70  # nothing on its way: no wait for a batch to fill
    lone.announce()
    waiting = lone.submit("c", 8)
    time.sleep(0.3)
    assert not waiting.done()  # an announced request may still join: the batch waits (up to max_wait_s)
    lone.withdraw()  # ... until it is withdrawn
    assert waiting.result(5) == 80 and time.monotonic() - start < 10
    lone.stop()

    gate = threading.Event()
    blocked = MicroBatcher(lambda key, p: (gate.wait(5), p)[1], max_batch=1, max_wait_s=0, max_queue=2)
    first = blocked.submit("k", 1)
    time.sleep(0.2)  # the worker takes the first item and blocks in run
    waiting = [blocked.submit("k", 2), blocked.submit("k", 3)]
    with pytest.raises(QueueFull, match="limit is 2"):
        blocked.submit("k", 4)
    waiting[0].cancel()  # an abandoned request is skipped, not run
    gate.set()
    assert first.result(5) == 1 and waiting[1].result(5) == 3 and waiting[0].cancelled()
    blocked.stop()

    failing = MicroBatcher(lambda key, p: 1 / 0, max_batch=2, max_wait_s=0)
    with pytest.raises(ZeroDivisionError):
        failing.submit("k", 1).result(5)
    failing.stop()


def test_instance_model_gives_boxes_scores_and_masks(client_for):
    torch.manual_seed(0)
    model = seglab.create_model("mask_rcnn_resnet50_fpn", num_classes=3, min_size=64, max_size=96,
                                box_score_thresh=0.0).eval()
    runner = InstanceRunner(model, "mask_rcnn_resnet50_fpn", get_label_set("voc"), ["__bg__", "circle", "square"],
                            score_threshold=0.0)
    client = client_for(runner)
    image = picture(64, 80, seed=2)
    body = client.post("/v1/segment?outputs=rle,polygons,png,overlay", content=encoded(image),
                       headers={"content-type": "image/png"}).json()
    with torch.inference_mode():
        reference = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    instances = body["instances"]
    assert body["task"] == "instance" and len(instances) == len(reference["scores"]) > 0
    for i, entry in enumerate(instances):
        assert entry["name"] == ["__bg__", "circle", "square"][entry["class_id"]]
        assert entry["score"] == pytest.approx(float(reference["scores"][i]), abs=1e-5)
        np.testing.assert_allclose(entry["box"], reference["boxes"][i].numpy(), atol=0.01)
        rle = {"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle), (reference["masks"][i, 0] > 0.5).numpy())
        assert isinstance(entry["polygons"], list)
    ids = np.asarray(png_of(body["png"]))
    assert ids.shape == (64, 80) and ids.max() <= len(instances)
    assert np.asarray(png_of(body["overlay"])).shape == (64, 80, 3)
    assert client.post("/v1/segment?mode=slide", content=encoded(image),
                       headers={"content-type": "image/png"}).status_code == 400


def test_person_parsing_model_gives_the_part_map_and_people(client_for):
    torch.manual_seed(0)
    model = seglab.create_model("parsing_rcnn_resnet50_fpn", min_size=64, max_size=96, box_score_thresh=0.0,
                                box_detections_per_img=3).eval()
    client = client_for(PeopleRunner(model, "parsing_rcnn_resnet50_fpn", get_label_set("lip"), score_threshold=0.0))
    image = picture(64, 64, seed=4)
    body = client.post("/v1/segment?outputs=png,rle", content=encoded(image),
                       headers={"content-type": "image/png"}).json()
    from seglab.engine.people import PeopleParser

    reference = PeopleParser(model, score_threshold=0.0)(image)
    assert body["task"] == "person_parsing" and len(body["people"]) == len(reference["people"]) > 0
    np.testing.assert_array_equal(np.asarray(png_of(body["png"])), reference["parsing"])
    for person, ref in zip(body["people"], reference["people"], strict=True):
        assert person["id"] == ref["id"] and person["score"] == pytest.approx(ref["score"], abs=1e-5)
        rle = {"size": person["rle"]["size"], "counts": person["rle"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle), reference["human_ids"] == ref["id"])


def test_onnx_model_is_served_without_torch(tmp_path):
    """`seglab serve --model x.onnx` in a child process where importing torch fails: it starts, answers, and its
    labels equal the torch model's."""
    import httpx

    from benchmarks.serve import free_port
    from seglab.export.onnx import export_onnx

    model = seglab.create_model("unet", num_classes=5, base_width=8).eval()
    onnx = export_onnx(model, tmp_path / "unet.onnx", input_size=(64, 64),
                       metadata={"model": "unet", "label_set": "demo_shapes"})
    image = picture(64, 64, seed=6)
    port = free_port()
    script = (
        "import sys, runpy\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, _NoTorch())\n"
        f"sys.argv = ['seglab', 'serve', '--model', {str(onnx)!r}, '--port', '{port}']\n"
        "runpy.run_module('seglab', run_name='__main__')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert child.poll() is None, child.stdout.read()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        card = httpx.get(f"{url}/v1/model").json()
        assert (card["backend"], card["name"], card["classes"][1]) == ("onnxruntime", "unet", "circle")
        png = {"content-type": "image/png"}
        response = httpx.post(f"{url}/v1/segment?outputs=png,rle,overlay", content=encoded(image), headers=png)
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(np.asarray(png_of(response.json()["png"])), seglab.Predictor(model)(image))
        bad = httpx.post(f"{url}/v1/segment?mode=slide", content=encoded(image), headers=png)
        assert bad.status_code == 400 and "whole" in bad.json()["error"]
    finally:
        child.terminate()
        child.wait(10)


def test_load_runner_reads_folders_and_weights_files(tmp_path):
    """The --model forms: a model folder (its classes, and its evaluation mode as the default), a seglab weights
    file, and a registered name with --weights; all predict as the Predictor does."""
    from seglab.checkpoint import save_weights
    from seglab.serve.runner import load_runner

    model = seglab.create_model("unet", num_classes=5, base_width=8).eval()
    folder = seglab.save_pretrained(model, tmp_path / "unet", name="unet",
                                    model_kwargs={"num_classes": 5, "base_width": 8}, label_set="demo_shapes",
                                    inference={"mode": "slide", "crop_size": [32, 32], "stride": [16, 16]})
    weights = save_weights(tmp_path / "w.safetensors", model.state_dict(), {
        "model": "unet", "num_classes": 5, "model_kwargs": {"base_width": 8}, "label_set": "demo_shapes"})
    image = picture(48, 64, seed=7)
    from_folder = load_runner(folder)
    assert (from_folder.name, from_folder.task, from_folder.default_mode) == ("unet", "semantic", "slide")
    assert from_folder.label_set.classes[1] == "circle"
    sliding = seglab.Predictor(model, mode="slide", crop_size=32, stride=16)(image)
    np.testing.assert_array_equal(from_folder.run([image], request_options("slide"))[0], sliding)
    for runner in (load_runner(weights), load_runner("unet", weights=weights)):
        assert runner.default_mode == "whole" and runner.label_set.name == "demo_shapes"
        np.testing.assert_array_equal(runner.run([image], request_options("whole"))[0],
                                      seglab.Predictor(model)(image))
    with pytest.raises(seglab.ConfigError, match="ONNX file"):
        load_runner(tmp_path / "x.onnx", backend="openvino")


def request_options(mode: str):
    from seglab.serve.runner import RequestOptions

    return RequestOptions(mode=mode)


def test_missing_serve_extra_names_it(monkeypatch):
    from seglab.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if uvicorn were not installed
    with pytest.raises(SystemExit, match=r"pip install 'seglab\[serve\]'"):
        main(["serve", "--model", "model.onnx"])
