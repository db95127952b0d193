"""What ``prune`` checks besides the read-back, recorded in ``prune_report.json``: how far the pruned
model's raw head outputs moved from the unpruned model's on a few images.

Removing a channel whose γ is 0 keeps its constant act(β) in the next layer's bias, which is exact
except where that layer's zero padding would have read the constant: a border of cells around each
head. The deviation is therefore given over all cells and over the interior, ``border`` cells in.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from edgeyolo.model.darknet import Darknet

BORDER_CELLS = 2


@dataclass(frozen=True)
class OutputDeviation:
    images: int
    img_size: int
    max_rel: float  # max|Δ| / max|ref| over every head cell
    interior_max_rel: float | None  # the same, BORDER_CELLS cells away from the edges (None: a head too small)
    border_cells: int = BORDER_CELLS

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        inner = "" if self.interior_max_rel is None else f" ({self.interior_max_rel:.2g} {self.border_cells} cells in from the border)"
        return f"raw outputs vs the unpruned model on {self.images} images: max|Δ|/max|ref| {self.max_rel:.2g}{inner}"


@torch.no_grad()
def output_deviation(before: Darknet, after: Darknet, batch: torch.Tensor) -> OutputDeviation:
    """``before`` and ``after`` on the same preprocessed ``batch`` [B, C, H, W], head by head."""
    full, inner, has_inner = 0.0, 0.0, False
    for ref, got in zip(before.eval().forward_raw(batch), after.eval().forward_raw(batch)):
        scale = float(ref.abs().max().clamp_min(1e-12))
        delta = (ref - got).abs()
        full = max(full, float(delta.max()) / scale)
        b = BORDER_CELLS
        if delta.shape[-1] > 2 * b and delta.shape[-2] > 2 * b:
            inner = max(inner, float(delta[..., b:-b, b:-b].max()) / scale)
            has_inner = True
    return OutputDeviation(int(batch.shape[0]), int(batch.shape[-1]), full, inner if has_inner else None)
