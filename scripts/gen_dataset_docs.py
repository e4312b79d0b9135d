"""Regenerate the datasets table of docs/datasets.md from the dataset registry: `python scripts/gen_dataset_docs.py`."""

from pathlib import Path

from seglab.data.datasets import with_datasets_table
from seglab.utils import atomic_write_text

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"
    atomic_write_text(out, with_datasets_table(out.read_text()))
    print(f"wrote {out}")
