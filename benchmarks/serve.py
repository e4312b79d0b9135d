"""Load test of ``seglab serve`` on the loopback interface, against the in-process Predictor on the same machine.

    python -m benchmarks.serve [--smoke] [--models lraspp_mobilenet_v3_large bisenetv2] [--size 512]
                               [--requests 200] [--soak 10000] [--out docs/serving_benchmark.md]
                               [--json docs/serving_benchmark.json]

For each model (random weights, saved as a model folder: speed does not depend on the weights' values, the
label maps' complexity does a little) it

1. times the in-process Predictor (``seglab.Predictor(model)(image)``, image array in, label map out) and the
   model's forward pass alone, interleaved, medians and IQR;
2. starts ``python -m seglab serve --model FOLDER`` on 127.0.0.1 in a subprocess (the default 2 torch threads,
   max batch 8, max wait 10 ms) and sends ``--requests`` PNG-encoded images (``outputs=png``) from 1, 4 and 16
   concurrent clients (threads with keep-alive connections): images/s, p50 and p99 latency, failures;
3. times each output kind's encoding (index PNG, per-class RLE, polygons, overlay; PNG at zlib level 1 as the
   server writes it and at Pillow's default 6 for comparison) on the model's label map;
4. soaks the server of the first model with ``--soak`` requests from 4 clients, sampling its resident memory
   (VmRSS) after a warm-up tenth and at the end: growth in percent, failures.

Bounded: every phase has a fixed number of requests and a time limit (``--max-seconds`` per phase); the server is
stopped at the end whatever happens. ``--smoke`` runs tiny sizes for the test suite; its numbers mean nothing.
Targets checked in the report: at 16 clients >= 85% of the Predictor's images/s; p99 at 4 clients <= 3x the
Predictor's single-image latency; soak growth < 5% with zero failures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import interleaved, machine_info, summary

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 4, 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def test_image(size: int, seed: int = 0) -> np.ndarray:
    """A photo-like test image: smooth colour gradients with a few shapes and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([120 + 80 * np.sin(6 * x + 2 * y), 100 + 90 * y, 140 - 70 * x], axis=-1)
    for _ in range(6):
        cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(size // 12, size // 4))]
        image[(y * size - cy) ** 2 + (x * size - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Server:
    """``python -m seglab serve`` in a subprocess on a free loopback port; stopped on exit."""

    def __init__(self, folder: Path, **options: Any) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "seglab", "serve", "--model", str(folder), "--port", str(self.port)]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"seglab serve exited with {self.process.returncode}: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("seglab serve did not start within 180 s")

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def load(url: str, body: bytes, clients: int, requests: int, max_seconds: float) -> dict[str, Any]:
    """``requests`` POSTs of ``body`` from ``clients`` threads: images/s, latency percentiles, failures."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + max_seconds

    sessions = [httpx.Client(timeout=120) for _ in range(clients)]  # made before the clock starts (SSL setup)

    def client(session: httpx.Client) -> None:
        with session:
            while time.monotonic() < stop_at:
                with lock:
                    if next(counter, None) is None:
                        return
                start = time.perf_counter()
                try:
                    r = session.post(f"{url}/v1/segment?outputs=png", content=body,
                                     headers={"content-type": "image/png"})
                    ok = r.status_code == 200
                    reason = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, reason = False, repr(exc)
                elapsed = time.perf_counter() - start
                with lock:
                    (latencies.append(elapsed) if ok else failures.append(reason))

    threads = [threading.Thread(target=client, args=(session,)) for session in sessions]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    return {"clients": clients, "requests": len(latencies), "failures": len(failures),
            "failure_examples": failures[:3], "images_per_s": len(latencies) / wall,
            "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3)}


def encoding_times(image: np.ndarray, label: np.ndarray, label_set: Any, reps: int) -> dict[str, list[float]]:
    """Seconds per encoding of one label map, per output kind (interleaved)."""
    from seglab.serve import encode

    palette = label_set.palette_bytes()

    def png_level6() -> bytes:
        picture = Image.fromarray(label.astype(np.uint8))
        picture.putpalette(palette)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()

    return interleaved({
        "png (zlib 1, served)": lambda: encode.label_png(label, palette),
        "png (zlib 6, Pillow default)": png_level6,
        "rle (per class)": lambda: encode.class_segments(label, label_set.classes, ("rle",)),
        "polygons (per class)": lambda: encode.class_segments(label, label_set.classes, ("polygons",)),
        "overlay (png)": lambda: encode.overlay_png(image, label, label_set.colors),
    }, reps=reps, warmup=1)


def bench_model(name: str, size: int, requests: int, soak: int, reps: int, max_seconds: float,
                workdir: Path) -> dict[str, Any]:
    import seglab
    from seglab.data.palettes import get_label_set
    from seglab.data.transforms import normalize_image

    torch.manual_seed(0)
    labels = get_label_set("voc")
    model = seglab.create_model(name, num_classes=labels.num_classes).eval()
    folder = seglab.save_pretrained(model, workdir / name, name=name,
                                    model_kwargs={"num_classes": labels.num_classes}, label_set=labels)
    image = test_image(size)
    body = png(image)
    predictor = seglab.Predictor(model)
    x = normalize_image(image)[None]

    def forward() -> None:
        with torch.inference_mode():
            predictor.model(x)

    inproc = interleaved({"predictor": lambda: predictor(image), "forward": forward}, reps=reps, warmup=2)
    label = predictor(image)
    row: dict[str, Any] = {
        "model": name, "size": size,
        "predictor_ms": summary(inproc["predictor"]), "forward_ms": summary(inproc["forward"]),
        "predictor_images_per_s": 1.0 / summary(inproc["predictor"])[0],
        "encoding_ms": {k: summary(v) for k, v in encoding_times(image, label, labels, reps).items()},
        "png_bytes": len(body),
    }
    with Server(folder) as server:
        load(server.url, body, 4, 8, max_seconds)  # warm-up: first requests of each batch size
        row["load"] = [load(server.url, body, c, requests, max_seconds) for c in CONCURRENCY]
        if soak:
            warm = max(1, soak // 10)
            load(server.url, body, 4, warm, max_seconds)
            before = rss_mib(server.process.pid)
            result = load(server.url, body, 4, soak - warm, max_seconds * 10)
            after = rss_mib(server.process.pid)
            row["soak"] = {**result, "requests_total": soak, "rss_after_warmup_mib": before,
                           "rss_end_mib": after, "rss_growth_pct": 100 * (after - before) / before}
    return row


def ms(pair: tuple[float, float]) -> str:
    return f"{pair[0] * 1e3:.1f} ({pair[1] * 1e3:.1f})"


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The markdown of docs/serving_benchmark.md."""
    lines = [
        "# seglab serve: load test", "",
        "Generated by `python -m benchmarks.serve` (see its docstring); do not edit by hand.", "",
        f"Machine: {meta['machine']}. Torch threads: {meta['threads']}. Server: `seglab serve` defaults (max batch 8, "
        f"max wait 10 ms), loopback, clients in the benchmark process (threads, keep-alive). {meta['requests']} "
        "requests per concurrency level; PNG bodies, `outputs=png` (the label map as an index PNG in JSON).", "",
        "## Throughput and latency", "",
        "| model | size | forward ms | Predictor ms (in-process) | Predictor img/s | clients | server img/s | "
        "server / Predictor | p50 ms | p99 ms | p99 / Predictor ms | failures |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        single = row["predictor_ms"][0] * 1e3
        for r in row["load"]:
            lines.append(
                f"| {row['model']} | {row['size']} | {ms(row['forward_ms'])} | {ms(row['predictor_ms'])} | "
                f"{row['predictor_images_per_s']:.1f} | {r['clients']} | {r['images_per_s']:.1f} | "
                f"{100 * r['images_per_s'] / row['predictor_images_per_s']:.0f}% | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['p99_ms'] / single:.2f}x | {r['failures']} |")
    lines += ["", "Times are medians with the interquartile range in brackets.", "",
              "## Targets", "",
              "| model | 16 clients >= 85% of the Predictor | p99 at 4 clients <= 3x | soak growth < 5%, no failures |",
              "| --- | --- | --- | --- |"]
    for row in rows:
        by = {r["clients"]: r for r in row["load"]}
        share = by[16]["images_per_s"] / row["predictor_images_per_s"]
        p99 = by[4]["p99_ms"] / (row["predictor_ms"][0] * 1e3)
        soak = row.get("soak")
        soaked = "-"
        if soak:
            met = soak["rss_growth_pct"] < 5 and soak["failures"] == 0
            soaked = (f"{soak['rss_growth_pct']:+.2f}%, {soak['failures']} failed of {soak['requests_total']} "
                      f"({'met' if met else 'missed'})")
        lines.append(f"| {row['model']} | {100 * share:.0f}% ({'met' if share >= 0.85 else 'missed'}) | "
                     f"{p99:.2f}x ({'met' if p99 <= 3 else 'missed'}) | {soaked} |")
    lines += ["", "## Encoding time per output kind (one label map, ms)", "",
              "| model | " + " | ".join(rows[0]["encoding_ms"]) + " |",
              "| --- |" + " --- |" * len(rows[0]["encoding_ms"])]
    for row in rows:
        lines.append(f"| {row['model']} | " + " | ".join(ms(v) for v in row["encoding_ms"].values()) + " |")
    soaks = [row for row in rows if row.get("soak")]
    if soaks:
        lines += ["", "## Soak", "", "| model | requests | failures | img/s | RSS after warm-up MiB | RSS at end MiB | "
                  "growth |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in soaks:
            s = row["soak"]
            lines.append(f"| {row['model']} | {s['requests_total']} | {s['failures']} | {s['images_per_s']:.1f} | "
                         f"{s['rss_after_warmup_mib']:.0f} | {s['rss_end_mib']:.0f} | {s['rss_growth_pct']:+.2f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and counts (for the test suite)")
    parser.add_argument("--models", nargs="+", default=["lraspp_mobilenet_v3_large", "bisenetv2"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--soak", type=int, default=0,
                        help="soak requests on the first model (0: no soak; the documented run: 10000)")
    parser.add_argument("--reps", type=int, default=20, help="repetitions of the in-process timings")
    parser.add_argument("--max-seconds", type=float, default=300, help="time limit per load phase")
    parser.add_argument("--out", help="write the markdown report here")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.size, args.requests, args.soak, args.reps = ["lraspp_mobilenet_v3_large"], 64, 8, 20, 2
    with tempfile.TemporaryDirectory(prefix="seglab-serve-bench-") as tmp:
        rows = [bench_model(m, args.size, args.requests, args.soak if i == 0 else 0, args.reps, args.max_seconds,
                            Path(tmp)) for i, m in enumerate(args.models)]
    meta = {"machine": machine_info(torch.get_num_threads()), "threads": torch.get_num_threads(),
            "requests": args.requests}
    text = report(rows, meta)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
