"""Multi-person human parsing of single images, and the painting of people into one part map.

Two kinds of models parse each person: detectors (Parsing R-CNN, the torchvision detection contract: each
detected person's part map pasted back into the image) and bottom-up models (PGN: one part map and instance
edges, grouped into people by :func:`seglab.models.parsing.pgn.group_instances` through the model's
``predict_instances``). :class:`PeopleParser` gives both the same output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from seglab.engine.forward import model_device


def paint_people(maps: Tensor, order: Sequence[int], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Paint per-person part maps ``[N, H, W]`` in ``order`` (later ones on top), each over its foreground
    (label > 0): returns the part map and the person map (``i + 1`` where person ``maps[i]`` shows, else 0)."""
    parsing = torch.zeros(size, dtype=torch.int64, device=maps.device)
    people = torch.zeros(size, dtype=torch.int64, device=maps.device)
    for i in order:
        inside = maps[i] > 0
        parsing = torch.where(inside, maps[i].to(torch.int64), parsing)
        people = torch.where(inside, torch.full_like(people, i + 1), people)
    return parsing, people


def semantic_from_instances(
    result: dict[str, Tensor], image_size: tuple[int, int], score_threshold: float = 0.3
) -> Tensor:
    """Merge one image's per-person part maps into a single part map: Int64[H, W].

    As Parsing R-CNN's ``parsing_png`` (used for its mIoU): persons with ``parsing_scores`` >= ``score_threshold``
    (0.3, the reference's ``SEMSEG_SCORE_THRESH`` for CIHP) are painted in increasing score order, each over its
    own foreground (label > 0) pixels, so the higher-scoring person wins where they overlap; the rest is 0.
    """
    scores = result["parsing_scores"]
    order = [k for k in torch.argsort(scores, stable=True).tolist() if scores[k] >= score_threshold]
    return paint_people(result["parsing"], order, image_size)[0]


class PeopleParser:
    """Parse every person of single images: ``PeopleParser(model)(image) -> dict``.

    ``image`` is an HxWx3 uint8 array (or anything :func:`seglab.data.transforms.image_tensor` reads). Returns
    ``{"parsing": HxW int64 part labels, "human_ids": HxW int64 (0 background, n person n), "people":
    [{"id", "score", "box": [x0, y0, x1, y1]}]}``. A detector's people are those scoring at least
    ``score_threshold``, numbered by decreasing score and painted lowest score first, so the best-scoring person
    is on top where people overlap; a bottom-up model's people are its groups.
    """

    def __init__(self, model: nn.Module, *, score_threshold: float = 0.5,
                 device: str | torch.device | None = None) -> None:
        self.detector = isinstance(model, GeneralizedRCNN)
        if not self.detector and not callable(getattr(model, "predict_instances", None)):
            raise ValueError(f"{type(model).__name__} does not parse people one by one; expected a detector (Parsing "
                             "R-CNN) or a model that groups people (PGN's predict_instances)")
        self.device = torch.device(device) if device is not None else model_device(model)
        self.model = model.to(self.device).eval()
        self.score_threshold = score_threshold

    @torch.no_grad()
    def __call__(self, image: Any) -> dict[str, Any]:
        from seglab.data.transforms import image_tensor, normalize_image

        if not self.detector:  # PGN: parts and instance edges, grouped
            result = self.model.predict_instances(normalize_image(np.asarray(image))[None].to(self.device))[0]
            people = [{"id": int(h["id"]), "score": float(h["score"]), "box": [float(v) for v in h["box"]]}
                      for h in result["humans"]]
            return {"parsing": np.asarray(result["parsing"]), "human_ids": np.asarray(result["human_ids"]),
                    "people": people}
        x = image_tensor(image).float().div(255)
        result = self.model([x.to(self.device)])[0]
        keep = (result["scores"] >= self.score_threshold).nonzero().flatten().tolist()
        maps = result["parsing"][keep].cpu()
        parsing, order_ids = paint_people(maps, list(reversed(range(len(keep)))), tuple(x.shape[-2:]))
        people = [{"id": n, "score": float(result["scores"][i]), "box": [float(v) for v in result["boxes"][i]]}
                  for n, i in enumerate(keep, start=1)]
        return {"parsing": parsing.numpy(), "human_ids": order_ids.numpy(), "people": people}


__all__ = ["PeopleParser", "paint_people", "semantic_from_instances"]
