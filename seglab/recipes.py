"""The configs that ship with seglab (package data in ``seglab.configs``), listed and found by name.

Each is ``<family>/<name>.yaml`` inside the package; its name is the file's stem (``bisenetv2_cityscapes``), or
``<family>/<name>`` where two families hold the same stem. :func:`resolve_config` turns what a user typed after
``seglab train`` into a file: an existing path is taken as it is; otherwise a name, or a repository path such as
``configs/fcn/fcn8s_vgg16_voc.yaml``, is looked up among the packaged configs, so the commands of the README work
after a plain ``pip install`` too. ``seglab configs`` prints :func:`list_recipes`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from seglab.errors import ConfigError

PACKAGE = "seglab.configs"
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Recipe:
    """A packaged config: its ``name`` (the stem), ``family`` (its folder), file ``path``, the ``model`` and
    ``dataset`` it names and ``summary``, the first line of its leading comment."""

    name: str
    family: str
    path: Path
    model: str
    dataset: str
    summary: str

    @property
    def key(self) -> str:
        """``<family>/<name>``: unique even where a stem is not."""
        return f"{self.family}/{self.name}"


def packaged_root() -> Path:
    """The folder holding the packaged configs (inside the installed package)."""
    return Path(str(resources.files(PACKAGE)))


def _read(path: Path, root: Path) -> Recipe:
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    comment = next((line for line in text.splitlines() if line.strip()), "")
    summary = comment.lstrip("#").strip() if comment.startswith("#") else ""
    model = (data.get("model") or {}).get("name", "")
    dataset = (data.get("data") or {}).get("dataset", "")
    family = path.parent.relative_to(root).as_posix()
    return Recipe(path.stem, family, path, str(model), str(dataset), summary)


def list_recipes(dataset: str | None = None, model: str | None = None) -> list[Recipe]:
    """The packaged configs, sorted by family and name; only those for ``dataset`` / ``model`` if given."""
    root = packaged_root()
    paths = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    recipes = [_read(p, root) for p in paths]
    return [r for r in recipes if (dataset is None or r.dataset == dataset) and (model is None or r.model == model)]


def _packaged_path(relative: str) -> Path | None:
    """``relative`` (``fcn/fcn8s_vgg16_voc.yaml``, optionally under ``configs/``) inside the package, if there."""
    parts = Path(relative).parts
    if "configs" in parts:
        parts = parts[len(parts) - parts[::-1].index("configs"):]
    if not parts:
        return None
    candidate = packaged_root().joinpath(*parts)
    return candidate if candidate.is_file() else None


def resolve_config(name_or_path: str | Path) -> Path:
    """The config file ``name_or_path`` means.

    An existing file is returned as given. A name (``bisenetv2_cityscapes``, ``bisenet/bisenetv2_cityscapes``,
    with or without ``.yaml``) or a repository path (``configs/fcn/fcn8s_vgg16_voc.yaml``) is looked up among the
    packaged configs. A path that is not there either is returned unchanged, so loading it reports the missing
    file; an unknown name is a :class:`~seglab.errors.ConfigError` naming the closest packaged ones.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    has_suffix = path.suffix in SUFFIXES
    if has_suffix or len(path.parts) > 1:
        found = _packaged_path(text if has_suffix else f"{text}.yaml")
        if found is not None or has_suffix and len(path.parts) > 1:
            return found or path
    stem = path.stem if has_suffix else text
    recipes = list_recipes()
    matches = [r for r in recipes if r.name == stem or r.key == stem]
    if len(matches) == 1:
        return matches[0].path
    if matches:
        raise ConfigError(f"config {text!r} is ambiguous: {', '.join(r.key for r in matches)}; give one of these")
    names = sorted({r.name for r in recipes})
    close = difflib.get_close_matches(stem, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"{text}: no such config file, and no packaged config of that name{hint} "
                      f"(`seglab configs` lists the {len(names)} packaged ones)")


__all__ = ["PACKAGE", "Recipe", "list_recipes", "packaged_root", "resolve_config"]
