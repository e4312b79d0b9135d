"""``seglab serve``: an HTTP inference server for any seglab model, with micro-batching and a web page.

- :mod:`seglab.serve.runner`: the model behind the server (torch fast path, onnxruntime without torch,
  detectors, multi-person parsing), each with its batching key and its response encoding;
- :mod:`seglab.serve.batching`: the micro-batcher (one inference thread, bounded queue);
- :mod:`seglab.serve.encode`: upload checks and decoding, index PNGs, overlays, COCO RLE and polygons;
- :mod:`seglab.serve.app`: the FastAPI routes, limits, API key and Prometheus metrics; ``static/index.html``
  the page at ``/``.

:func:`serve` is what the CLI runs. FastAPI, uvicorn, python-multipart, prometheus_client and OpenCV are the
``seglab[serve]`` extra; nothing here imports torch unless the model needs it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

API_KEY_ENV = "SEGLAB_API_KEY"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model: str | Path, *, weights: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          backend: str = "torch", precision: str = "fp32", api_key: str | None = None, device: str | None = None,
          **settings: object) -> None:
    """Load ``model`` (:func:`seglab.serve.runner.load_runner`) and serve it with uvicorn until interrupted.
    ``api_key`` defaults to the ``SEGLAB_API_KEY`` environment variable; ``settings`` are
    :class:`seglab.serve.app.ServeSettings` fields (max_batch, max_wait_ms, max_queue, ...)."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError("seglab serve needs uvicorn: pip install 'seglab[serve]'") from None
    from seglab.serve.app import ServeSettings, create_app
    from seglab.serve.runner import load_runner

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(host) and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model; pass "
                    "--api-key (or set %s)", host, API_KEY_ENV)
    options = {k: v for k, v in settings.items() if v is not None}
    window_batch = int(options.get("max_batch", ServeSettings.max_batch))  # type: ignore[arg-type]
    runner = load_runner(model, weights=weights, backend=backend, precision=precision, window_batch=window_batch,
                         device=device)
    app = create_app(runner, ServeSettings(api_key=api_key, **options))  # type: ignore[arg-type]
    print(f"seglab serve: {runner.name} ({runner.task}, {runner.backend}, {runner.precision}) on "
          f"http://{host}:{port}/  (API: /v1/segment, /v1/model, /healthz, /metrics)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["API_KEY_ENV", "is_loopback", "serve"]
