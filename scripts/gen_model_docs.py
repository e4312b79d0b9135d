"""Regenerate docs/models.md from the model registry: `python scripts/gen_model_docs.py`."""

from pathlib import Path

from seglab.model_table import models_markdown
from seglab.utils import atomic_write_text

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "docs" / "models.md"
    atomic_write_text(out, models_markdown())
    print(f"wrote {out}")
