"""Renaming mmsegmentation state dicts by module prefix, shared by the family key maps.

A family map is a table ``{mmseg module: seglab module}``; a key is renamed by its longest module prefix found in
the table (the rest of the key, ``weight``, ``running_mean``, ..., is kept). mmseg's ``ConvModule`` (``conv``,
``bn``) is seglab's ``ConvBNAct`` (``0``, ``1``): :func:`conv_module` writes that pair.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from seglab.checkpoint import rename_prefix, state_dict_problems
from seglab.errors import CheckpointError

__all__ = ["COUNTER", "conv_module", "rename_state"]

COUNTER = ".num_batches_tracked"

ModulePairs = list[tuple[str, str]]


def conv_module(theirs: str, ours: str) -> ModulePairs:
    """mmcv's ``ConvModule`` at ``theirs`` (``.conv``, ``.bn``) -> seglab's ``ConvBNAct`` at ``ours`` (``.0``,
    ``.1``)."""
    return [(f"{theirs}.conv", f"{ours}.0"), (f"{theirs}.bn", f"{ours}.1")]




def rename_state(
    state: dict[str, torch.Tensor],
    model: nn.Module,
    modules: dict[str, str],
    source: str,
    what: str,
    *,
    optional: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """``state`` (mmseg names) renamed to ``model``'s names by ``modules``, after checking that it has exactly the
    model's tensors and shapes: one :class:`~seglab.errors.CheckpointError` lists the missing, unexpected and
    mis-shaped keys in mmseg's names (``what`` names the expected network). The model's keys under a prefix in
    ``optional`` (its seglab names, e.g. an aux head) are not expected when the file has none of them; BatchNorm
    counters are left out of the check. Only names change here: shapes are compared after the rename, so a map
    whose tensors need reordering does that before or after, keeping shapes."""
    inverse = {ours: theirs for theirs, ours in modules.items()}
    renamed = {rename_prefix(k, modules): v for k, v in state.items()}
    absent = tuple(p for p in optional if not any(k.startswith(p) for k in renamed))
    own = {k: v for k, v in model.state_dict().items() if not (absent and k.startswith(absent))}
    expected = {rename_prefix(k, inverse): v for k, v in own.items() if not k.endswith(COUNTER)}
    problems = state_dict_problems(expected, {k: v for k, v in state.items() if not k.endswith(COUNTER)})
    if problems:
        raise CheckpointError(f"{source}: not an mmsegmentation {what} checkpoint ({' | '.join(problems)})")
    for name, value in own.items():  # BatchNorm counters a file saved without them lacks
        if name.endswith(COUNTER):
            renamed.setdefault(name, torch.zeros_like(value, device="cpu"))
    return renamed
