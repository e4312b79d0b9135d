"""Regenerate docs/models.md from the model registry and the recorded demo runs: `python scripts/gen_model_docs.py`."""

from pathlib import Path

from seglab.model_table import models_markdown
from seglab.utils import atomic_write_text

DOCS = Path(__file__).resolve().parents[1] / "docs"

if __name__ == "__main__":
    out = atomic_write_text(DOCS / "models.md", models_markdown(DOCS))
    print(f"wrote {out}")
