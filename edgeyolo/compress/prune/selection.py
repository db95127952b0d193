"""Channel selection: from per-channel scores to a keep-mask per conv.

One global ranking decides (Network Slimming, compression-algorithms.md §2.1): all candidate
channels are sorted by score and ``--percent P`` removes the ``floor(P·N)`` lowest. Ranks instead of
the reference's ``|γ| >= thr`` make ties (many γ exactly 0 after sparse training) remove exactly the
requested count. The structural rules then adjust the masks: a per-layer minimum, rounding to a
multiple of N (regular), and one mask per residual channel space (shortcut: the stage's source
conv's, slim: the union of all members').

The largest safe percent is exact, not a printed hint: a layer keeps its channels ranked ``>= k``,
so it keeps at least ``m`` of them while its ``m``-th best channel ranks ``>= k``; the smallest such
rank over the checked layers is the largest removal count that leaves every layer its minimum.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

#: digits of the percents shown to the user; shown values are rounded down so that they are safe
PERCENT_DIGITS = 4


def min_keep(width: int, layer_keep: float) -> int:
    """Fewest channels a pruned layer keeps: ``ceil(width · layer_keep)``, and at least one."""
    return max(1, math.ceil(width * layer_keep - 1e-9))


def percent_to_count(percent: float, total: int) -> int:
    return min(total, math.floor(percent * total + 1e-9))


def count_to_percent(count: int, total: int) -> float:
    """The largest shown percent whose count is at most ``count``."""
    if total == 0:
        return 0.0
    scale = 10**PERCENT_DIGITS
    return math.floor(count / total * scale + 1e-9) / scale


def top_channels(score: Tensor, count: int) -> Tensor:
    """Mask of the ``count`` highest-scoring channels (ties: the lower channel index wins)."""
    order = torch.sort(-score, stable=True).indices
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    mask[order[:count]] = True
    return mask


class Ranking:
    """The candidate channels of some layers in one global order, lowest score first.

    Ties are broken by layer order, then channel order, so a ranking (and every mask derived from
    it) is deterministic.
    """

    def __init__(self, scores: Mapping[int, Tensor]):
        self.layers = tuple(sorted(scores))
        flat = torch.cat([scores[i].flatten().double() for i in self.layers]) if self.layers else torch.zeros(0)
        order = torch.sort(flat, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        self.sorted = flat[order]
        self.ranks = dict(zip(self.layers, rank.split([scores[i].numel() for i in self.layers]), strict=True))

    def __len__(self) -> int:
        return int(self.sorted.numel())

    def keep_masks(self, count: int) -> dict[int, Tensor]:
        """Masks that remove the ``count`` lowest-ranked channels."""
        return {i: r >= count for i, r in self.ranks.items()}

    def threshold(self, count: int) -> float | None:
        """Score of the lowest channel still kept after removing ``count`` (None when all go)."""
        return float(self.sorted[count]) if count < len(self) else None

    def safe_count(self, layers: Iterable[int], minimum: Callable[[int], int]) -> int:
        """Largest removal count that leaves each of ``layers`` at least ``minimum(width)`` ranked channels."""
        safe = len(self)
        for i in layers:
            r = torch.sort(self.ranks[i]).values
            need = minimum(r.numel())
            if need > 0:
                safe = min(safe, int(r[r.numel() - need]))
        return safe


def top_up(masks: dict[int, Tensor], scores: Mapping[int, Tensor], layer_keep: float) -> dict[int, Tensor]:
    """Slim's per-layer minimum: a layer left with too few channels keeps its best ``min_keep``."""
    out = {}
    for i, mask in masks.items():
        need = min_keep(mask.numel(), layer_keep)
        out[i] = top_channels(scores[i], need) if int(mask.sum()) < need else mask
    return out


def round_up(mask: Tensor, score: Tensor, multiple: int) -> Tensor:
    """Keep the best ``ceil(kept / multiple) · multiple`` channels (regular pruning; width divisible)."""
    width = mask.numel()
    count = min(width, max(multiple, math.ceil(int(mask.sum()) / multiple) * multiple))
    return top_channels(score, count)


def union(masks: Iterable[Tensor]) -> Tensor:
    masks = list(masks)
    merged = masks[0].clone()
    for mask in masks[1:]:
        merged |= mask
    return merged
