"""Sparse training: an L1 penalty on the BN scale γ of the layers a pruning method may cut.

Network Slimming (Liu et al., ICCV 2017) ranks a conv's output channels by |γ| of the BN after it;
training with ``s·Σ|γ|`` added to the loss drives the unimportant γ towards zero so that a global
|γ| threshold later removes them with little loss of accuracy. Two things decide whether that works:

* **which γ are penalised** (:func:`~edgeyolo.compress.prune.prunable.prunable_bn`, the prunable
  set shared with the pruning methods): only channels that the chosen pruning method can actually
  remove. Penalising a γ whose channel is structurally tied to another layer (a residual
  sum, a depthwise conv, an SPP concat ...) only costs accuracy and buys no speed. The set is
  computed from the cfg graph, so it is right for any cfg rather than for the index lists of a few
  known models;
* **how strong the penalty is over time** (:class:`SparsityRegularizer`): constant, the two decays
  of the reference repositories, or edgeyolo's feedback-controlled ``dynamic`` rate.

:func:`gamma_stats` and :func:`plot_gamma_histogram` show how far sparsification has come.
"""
from __future__ import annotations

import io
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edgeyolo.compress.prune.prunable import PrunableSet, PruneMode, prunable_bn
from edgeyolo.errors import UsageError
from edgeyolo.model.darknet import ConvBlock, Darknet

logger = logging.getLogger(__name__)

#: factor applied to ``s`` once a schedule decays (TL's strategy 2 and 3)
DECAY_FACTOR = 0.01
#: sparsity penalties (see :class:`SparsityRegularizer`)
PENALTIES = ("l1", "polar", "gradual")
#: what the ``gradual`` penalty ranks the γ by (see :class:`SparsityRegularizer`)
RANKINGS = ("magnitude", "taylor")
#: per-step decay of the running Taylor importance (a memory of about 20 optimizer steps)
TAYLOR_DECAY = 0.95
#: |γ| thresholds reported by :func:`gamma_stats`
STAT_THRESHOLDS = (1e-2, 1e-3)
STAT_PERCENTILES = (1, 5, 25, 50, 75, 95)


# --------------------------------------------------------------------------------------------- penalty


class SparsitySchedule(str, Enum):
    CONSTANT = "constant"
    STEP = "step"
    LOCAL = "local"
    DYNAMIC = "dynamic"

    @classmethod
    def parse(cls, value: str | SparsitySchedule) -> SparsitySchedule:
        try:
            return cls(value)
        except ValueError:
            raise UsageError(
                f"unknown sparse-rate schedule {value!r}; expected one of {', '.join(m.value for m in cls)}"
            ) from None


def _bn_modules(model: nn.Module, layers: Iterable[int]) -> list[tuple[int, nn.BatchNorm2d]]:
    module_list = getattr(model, "module_list", None)
    if module_list is None:
        raise UsageError(f"expected a Darknet model (with .module_list), got {type(model).__name__}; unwrap DDP/EMA first")
    out = []
    for i in layers:
        block = module_list[i] if 0 <= i < len(module_list) else None
        if not isinstance(block, ConvBlock) or block.bn is None:
            raise UsageError(f"layer {i} is not a convolutional layer with batch norm; only BN γ can be sparsified")
        out.append((int(i), block.bn))
    return out


def _abs_gammas(bns: Iterable[tuple[int, nn.BatchNorm2d]]) -> Tensor:
    parts = [bn.weight.detach().abs().flatten().float() for _, bn in bns]
    return torch.cat(parts) if parts else torch.zeros(0)


def _check_fraction(name: str, value: float, low_open: bool = True) -> float:
    value = float(value)
    ok = (0.0 < value if low_open else 0.0 <= value) and value <= 1.0
    if not ok:
        raise UsageError(f"{name} must lie in {'(0' if low_open else '[0'}, 1], got {value}")
    return value


class SparsityRegularizer:
    """Adds the L1 subgradient ``s_eff · sign(γ)`` to the BN γ gradients of the prunable set.

    Call :meth:`apply` once per **optimizer step**, after ``backward()`` (after the last micro-batch
    when accumulating) and after ``GradScaler.unscale_()`` under AMP, before ``optimizer.step()``.
    The penalty is then independent of batch size, gradient accumulation and the AMP loss scale:
    ``--s 0.001`` moves γ by ``lr · 0.001`` per step whatever the batch. (The reference adds it per
    mini-batch, so it grows with the accumulation count, and before unscaling, so AMP divides it
    by the loss scale: compression-algorithms.md §1.1.) γ should sit in a param group without
    weight decay, or the decay adds a second, L2, pull.

    Schedules (``epoch`` counts from 0; ``decay_epoch = ceil(decay_start · epochs)``):

    * ``constant`` — ``s`` throughout (the reference default);
    * ``step`` — ``s`` before ``decay_epoch``, ``0.01 · s`` from it on (TL strategy 2: compress hard
      early, let accuracy recover later);
    * ``local`` — ``s`` before ``decay_epoch``; from it on, at every step, the channels whose |γ| is
      at or above the ``local_percentile`` quantile of all prunable |γ| (``sorted[int(N·p)]``, i.e.
      the top ``1 − p``, 30 % by default) get ``0.01 · s`` and the rest keep ``s`` (TL strategy 3:
      ``p`` is the prune ratio you intend, so the channels you will keep stop being pushed);
    * ``dynamic`` — edgeyolo's variable sparse rate, a feedback controller. Before every optimizer
      step :meth:`apply` measures ``frac``, the fraction of prunable |γ| below ``threshold``::

          gap    = (target - frac) / target
          s_t    = s · clip(gain · gap, s_min_factor, s_max_factor)   while frac < target
          hold   once frac >= target

      Defaults (threshold 1e-2, target 0.5, gain 2, factors 1..2): far from the target (frac = 0)
      the rate is 2·s, from half-way on it is s. It does not taper below s near the target: a rate
      tapering to 0.1·s stalled short of it (measured, 30 epochs, s 0.015, target 55 %: from epoch 6
      on the fraction crept from 44.5 % to 48.9 % at 0.22–0.38·s, the data gradient holding the last
      γ up), and the overshoot a taper would prevent is stopped by the hold and the momentum
      release below. In the **hold** phase the γ already below ``threshold`` keep the plain L1
      pull ``s · sign(γ)``, which holds them at zero, and every other γ is left to the data alone:
      the channels to be cut stay cut, none more are pushed, and the rest of the run recovers the
      accuracy. Given the optimizer, :meth:`apply` also clears the momentum of the released γ when
      a hold starts (:meth:`release_momentum`). If ``frac`` falls under the target again the
      controller takes over again. Measuring every step (a few thousand |γ|, negligible next to
      the step) stops the rate overshooting between two measurements; ``s_t`` depends only on the
      current weights, so runs and resumes are deterministic.

    :attr:`current_s` is the rate in force (for ``local``, the rate of the not-relieved channels).

    Penalties (``penalty``):

    * ``l1`` — ``s · Σ|γ|``, the reference's (Network Slimming). It pulls every γ towards zero at the
      same speed, so a set of γ that start close together (a briefly trained model) shrinks as a
      block and only separates near zero, after the accuracy has collapsed;
    * ``polar`` — the polarization regularizer of Zhuang et al. (NeurIPS 2020),
      ``s · Σ (t·|γ_i| − ||γ_i| − μ|)`` with μ the mean |γ| of the whole prunable set. Its
      subgradient is ``s · sign(γ) · (t − sign(|γ| − μ))``: γ below the mean are pulled down at
      ``(t + 1)·s``, those above at ``(t − 1)·s`` (pushed up when ``t < 1``), so the set splits into
      a group going to zero and a group that keeps its scale instead of all shrinking together.
      ``t`` (``polar_t``, default 1) sets the balance. The mean's own dependence on each γ is
      left out of the subgradient (it is ``O(1/N)``). With ``polar_mean="layer"`` each conv's γ
      are split around that conv's own mean |γ| instead, so a conv whose γ are all small (a wide
      conv late in the network) is not pulled down as a whole. (Measured, ``--prune 1``,
      edgeyolo-res: 2.9 mAP points under the global mean after 21 of 30 epochs.)
    * ``gradual`` — only the smallest |γ| of the set are pulled, ``s · sign(γ)``, and how many is a
      cubic ramp over the run (the schedule of Zhu & Gupta's gradual magnitude pruning, 2017)::

          k(p) = ceil(N · target · (1 − (1 − min(p / ramp, 1))³))

      with ``p`` the fraction of the run done (``progress``), ``N`` the set's size, ``target`` the
      wanted fraction and ``ramp`` (default 0.5) the point of the run where it is reached. The
      other γ get nothing. Few channels are pushed at any time, fastest early while the network
      has the most time left to adapt, and never more than ``target`` of the set, so the fraction
      does not overshoot. ``s`` must be large enough for the pulled γ to keep up with the ramp
      (the run prints the reach). With ``rank="taylor"`` the channels pulled are those of the
      lowest *importance* instead of the smallest |γ|: the first-order estimate of what zeroing γ
      costs the loss, ``(γ · ∂L/∂γ)²`` (Molchanov et al., CVPR 2019), a running mean over optimizer
      steps (decay ``TAYLOR_DECAY``) of the data gradient before the penalty is added. Unlike |γ|,
      it is in loss units, so convs of different γ scale compare, and a channel the data still
      uses is not cut for being small. A pulled channel's importance falls with its γ, so the
      pulled set settles. (Measured, ``--prune 1``, edgeyolo-res, 30 epochs, 52 % cut: 0.6 mAP
      points under normal training, against 2.4 for ``polar``; ranked by magnitude, the same
      settings stalled at 43 %.)

    ``layer_cap`` (default 1: none) bounds the share of each conv's γ the penalty pulls: until the
    hold, only the ``floor(layer_cap · n)`` smallest |γ| of a conv with ``n`` channels are pulled
    towards zero, the rest get no pull (a push up, ``polar`` with ``t < 1``, is kept). A global
    ranking otherwise empties the convs whose γ are small as a whole (measured, ``--prune 1``:
    89 % of a 256-channel conv cut for a 52 % target). It did not buy accuracy there: capped at
    0.7, the 30-epoch run ended 2.7 points under normal training, uncapped 2.4. The cap must be
    at least ``target`` for the target to stay reachable.
    """

    def __init__(
        self,
        model: Darknet,
        mode: int | PruneMode,
        s: float,
        schedule: str | SparsitySchedule = "constant",
        epochs: int | None = None,
        *,
        decay_start: float = 0.5,
        local_percentile: float = 0.7,
        threshold: float = 1e-2,
        target: float = 0.5,
        gain: float = 2.0,
        s_min_factor: float = 1.0,
        s_max_factor: float = 2.0,
        prunable: PrunableSet | None = None,
        penalty: str = "l1",
        polar_t: float = 1.0,
        ramp: float = 0.5,
        polar_mean: str = "global",
        layer_cap: float = 1.0,
        rank: str = "magnitude",
    ):
        self.schedule = SparsitySchedule.parse(schedule)
        if penalty not in PENALTIES:
            raise UsageError(f"unknown sparsity penalty {penalty!r}; expected one of {', '.join(PENALTIES)}")
        if not (math.isfinite(polar_t) and polar_t > 0):
            raise UsageError(f"the polarization balance t must be > 0, got {polar_t}")
        self.penalty = penalty
        self.polar_t = float(polar_t)
        if polar_mean not in ("global", "layer"):
            raise UsageError(f"the polarization mean must be 'global' or 'layer', got {polar_mean!r}")
        self.polar_mean = polar_mean
        if rank not in RANKINGS:
            raise UsageError(f"unknown γ ranking {rank!r}; expected one of {', '.join(RANKINGS)}")
        if rank != "magnitude" and penalty != "gradual":
            raise UsageError(f"ranking the γ by {rank} needs the 'gradual' sparsity penalty, got {penalty!r}")
        self.rank = rank
        self._importance: list[Tensor] | None = None  # rank="taylor": running (γ·∂L/∂γ)² per channel
        if not (math.isfinite(float(s)) and float(s) >= 0.0):
            raise UsageError(f"--s (sparse rate) must be a finite number >= 0, got {s}")
        if self.schedule in (SparsitySchedule.STEP, SparsitySchedule.LOCAL) and (epochs is None or int(epochs) <= 0):
            raise UsageError(f"the '{self.schedule.value}' sparse-rate schedule needs the number of epochs (> 0), got {epochs}")
        if penalty == "gradual" and (epochs is None or int(epochs) <= 0):
            raise UsageError(f"the 'gradual' sparsity penalty needs the number of epochs (> 0), got {epochs}")
        self.ramp = _check_fraction("the gradual penalty's ramp", ramp)
        if not 0.0 < s_min_factor <= s_max_factor:
            raise UsageError(f"need 0 < s_min_factor <= s_max_factor, got {s_min_factor} and {s_max_factor}")
        if not (math.isfinite(gain) and gain > 0):
            raise UsageError(f"the dynamic schedule's gain must be > 0, got {gain}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise UsageError(f"the |γ| threshold must be > 0, got {threshold}")
        self.s = float(s)
        self.epochs = int(epochs) if epochs is not None else None
        self.decay_start = _check_fraction("decay_start", decay_start, low_open=False)
        self.local_percentile = _check_fraction("local_percentile", local_percentile, low_open=False)
        self.threshold = float(threshold)
        self.target = _check_fraction("target", target)
        self.layer_cap = _check_fraction("the per-layer cap", layer_cap)
        if self.layer_cap < self.target:
            raise UsageError(f"the per-layer cap ({self.layer_cap:g}) is below the target ({self.target:g}): the target could not be reached")
        self.gain = float(gain)
        self.s_min_factor = float(s_min_factor)
        self.s_max_factor = float(s_max_factor)
        self.prunable = prunable if prunable is not None else prunable_bn(model.cfg, mode)
        self.mode = self.prunable.mode
        self._bns = _bn_modules(model, self.prunable.layers)
        self._epoch: int | None = None
        self._factor = 1.0
        self._fraction: float | None = None
        self._holding = False
        self._released = False  # the momentum of the γ released by the current hold was cleared

    def describe(self) -> str:
        """One line: the penalised set's size, what was left out and why, and the schedule."""
        # the kind of each reason, without its layer numbers ("feeds upsample 34" -> "feeds upsample")
        reasons = Counter(re.split(r"[\d(:]", why)[0].strip() for text in self.prunable.excluded.values() for why in text.split("; "))
        left_out = ", ".join(f"{why} {n}" for why, n in sorted(reasons.items())) or "none"
        channels = sum(bn.weight.numel() for _, bn in self._bns)
        return (
            f"sparse training: --prune {int(self.mode)} ({self.mode.name.lower()}) penalises {len(self._bns)} BN convs "
            f"({channels} γ); {len(self.prunable.excluded)} convs left out ({left_out}); "
            f"schedule {self.schedule.value}, s {self.s:g} per optimizer step"
            + (f", polarization t {self.polar_t:g} around the {self.polar_mean} mean" if self.penalty == "polar" else "")
            + (f", at most {self.layer_cap:.0%} of each conv pulled" if self.layer_cap < 1.0 else "")
            + (
                f", gradual: the {'least important' if self.rank == 'taylor' else 'lowest'} {self.target:.0%} by {self.ramp:.0%} of the run"
                if self.penalty == "gradual" else ""
            )
        )

    # ------------------------------------------------------------------ schedule

    @property
    def layers(self) -> tuple[int, ...]:
        return self.prunable.layers

    @property
    def decay_epoch(self) -> int | None:
        """First epoch of the decayed phase of ``step`` / ``local``; None for the others."""
        if self.epochs is None or self.schedule not in (SparsitySchedule.STEP, SparsitySchedule.LOCAL):
            return None
        return math.ceil(self.decay_start * self.epochs)

    @property
    def current_s(self) -> float:
        return self.s * self._factor

    @property
    def last_fraction(self) -> float | None:
        """Fraction of prunable |γ| below ``threshold`` at the last dynamic update (None before)."""
        return self._fraction

    def _decayed(self, epoch: int) -> bool:
        start = self.decay_epoch
        return start is not None and epoch >= start

    @property
    def holding(self) -> bool:
        """``dynamic`` only: the target is reached and only the γ below ``threshold`` are pulled."""
        return self._holding

    def _measure(self) -> None:
        gammas = _abs_gammas(self._bns)
        frac = float((gammas < self.threshold).double().mean()) if gammas.numel() else 0.0
        self._fraction = frac
        self._holding = frac >= self.target
        self._factor = self.dynamic_factor(frac)

    def update(self, epoch: int) -> float:
        """Set the rate for ``epoch`` (call at the start of each epoch); returns :attr:`current_s`.

        For ``dynamic`` this measures the γ now and logs them; :meth:`apply` measures again before
        every step.
        """
        epoch = int(epoch)
        if epoch < 0:
            raise UsageError(f"epoch must be >= 0, got {epoch}")
        if self.schedule is SparsitySchedule.DYNAMIC:
            self._measure()
            logger.info(
                "sparsity epoch %d: %.1f%% of prunable γ below %g (target %.0f%%) -> %s",
                epoch, 100 * self._fraction, self.threshold, 100 * self.target,
                f"holding them there (s = {self.current_s:.3g})" if self._holding else f"s = {self.current_s:.3g}",
            )
        elif self.schedule is SparsitySchedule.STEP:
            self._factor = DECAY_FACTOR if self._decayed(epoch) else 1.0
        else:
            self._factor = 1.0  # constant; local relieves per channel in apply()
        self._epoch = epoch
        return self.current_s

    def dynamic_factor(self, fraction: float) -> float:
        """``s_t / s`` of the dynamic schedule for a measured fraction of small γ (see the class doc);
        1 in the hold phase, where the rate acts on the γ below the threshold only."""
        if fraction >= self.target:
            return 1.0
        gap = (self.target - fraction) / self.target
        return min(max(self.gain * gap, self.s_min_factor), self.s_max_factor)

    def gradual_count(self, progress: float) -> int:
        """How many of the smallest |γ| the ``gradual`` penalty pulls at ``progress`` (0..1) of the run."""
        n = sum(bn.weight.numel() for _, bn in self._bns)
        x = min(max(float(progress), 0.0) / self.ramp, 1.0)
        return min(math.ceil(n * self.target * (1.0 - (1.0 - x) ** 3) - 1e-9), n)

    # ------------------------------------------------------------------ penalty

    @torch.no_grad()
    def apply(self, epoch: int, progress: float | None = None, optimizer: torch.optim.Optimizer | None = None) -> float:
        """Add ``s_eff · sign(γ)`` to each prunable γ's gradient; returns the rate used.

        Exactly once per optimizer step (see the class doc). Nothing but the prunable γ gradients
        is touched; a γ without a gradient yet gets the penalty as its gradient. ``progress`` is
        the fraction of the run done after this step (``gradual`` ramps with it; default: the
        start of ``epoch``). With ``optimizer``, entering the ``dynamic`` hold also clears the
        momentum of the γ it releases (see :meth:`release_momentum`).
        """
        if self._epoch != int(epoch):
            self.update(epoch)
        elif self.schedule is SparsitySchedule.DYNAMIC:
            self._measure()
        if self.rank == "taylor":
            self._update_importance()
        if not self._holding:
            self._released = False
        elif not self._released and optimizer is not None:
            self.release_momentum(optimizer)
            self._released = True
        s = self.current_s
        if s == 0.0:
            return s
        local = self.schedule is SparsitySchedule.LOCAL and self._decayed(int(epoch))
        ranked = not self._holding and (local or self.penalty in ("polar", "gradual"))
        gammas = _abs_gammas(self._bns) if ranked else None  # all prunable |γ|, in layer order
        relieve: Tensor | None = None
        if local:
            k = min(int(gammas.numel() * self.local_percentile), gammas.numel() - 1)
            relieve = torch.sort(gammas).values[k]
        mean = float(gammas.mean()) if ranked and self.penalty == "polar" and self.polar_mean == "global" else 0.0
        pulled: list[Tensor] | None = None
        if ranked and self.penalty == "gradual":
            if progress is None:
                progress = int(epoch) / self.epochs
            mask = torch.zeros_like(gammas, dtype=torch.bool)
            score = torch.cat([imp.flatten() for imp in self._importance]) if self.rank == "taylor" else gammas
            mask[torch.argsort(score, stable=True)[: self.gradual_count(progress)]] = True
            pulled = list(mask.split([bn.weight.numel() for _, bn in self._bns]))
        for j, (_, bn) in enumerate(self._bns):
            weight = bn.weight
            sign = torch.sign(weight.detach())
            magnitude = weight.detach().abs().float()
            if self._holding:  # plain L1 on the γ already cut, nothing on the rest
                step = torch.where(magnitude < self.threshold, sign * s, torch.zeros_like(sign))
            elif pulled is not None:
                step = torch.where(pulled[j].view_as(sign), sign * s, torch.zeros_like(sign))
            else:
                direction = sign
                if self.penalty == "polar":
                    centre = mean if self.polar_mean == "global" else float(magnitude.mean())
                    direction = sign * (self.polar_t - torch.sign(magnitude - centre)).to(sign.dtype)
                if relieve is None:
                    step = direction * s
                else:
                    coef = torch.where(magnitude >= relieve.to(weight.device), s * DECAY_FACTOR, s)
                    step = direction * coef.to(sign.dtype)
            if self.layer_cap < 1.0 and not self._holding:
                keep = torch.ones_like(sign, dtype=torch.bool).flatten()
                keep[torch.argsort(magnitude.flatten(), stable=True)[: math.floor(self.layer_cap * sign.numel() + 1e-9)]] = False
                step = torch.where(keep.view_as(sign) & (step * sign > 0), torch.zeros_like(step), step)
            if weight.grad is None:
                weight.grad = step
            else:
                weight.grad.add_(step.to(weight.grad.dtype))
        return s

    @torch.no_grad()
    def _update_importance(self) -> None:
        """Fold this step's ``(γ · ∂L/∂γ)²`` (the data gradient: call before adding the penalty)
        into the running importance; the first step sets it."""
        fresh = []
        for _, bn in self._bns:
            grad = bn.weight.grad
            fresh.append(torch.zeros_like(bn.weight.detach(), dtype=torch.float32) if grad is None else (bn.weight.detach() * grad).float() ** 2)
        if self._importance is None:
            self._importance = fresh
        else:
            for imp, new in zip(self._importance, fresh):
                imp.mul_(TAYLOR_DECAY).add_(new, alpha=1.0 - TAYLOR_DECAY)

    @torch.no_grad()
    def release_momentum(self, optimizer: torch.optim.Optimizer) -> int:
        """Zero the optimizer's momentum (SGD ``momentum_buffer``, Adam ``exp_avg``) of the prunable
        γ at or above ``threshold``; returns how many were cleared.

        When the hold starts, the γ on their way down still carry the velocity the penalty gave
        them, ``lr · s / (1 − m)`` per step with SGD momentum ``m`` (0.937: 16 steps' worth), which
        would carry them below the threshold after the penalty stopped and overshoot the target
        (measured: 52 % aimed, 58–63 % reached). Released, they move with their data gradient only.
        """
        cleared = 0
        for _, bn in self._bns:
            state = optimizer.state.get(bn.weight, {})
            buffers = [state.get(key) for key in ("momentum_buffer", "exp_avg")]
            buffers = [buf for buf in buffers if isinstance(buf, Tensor) and buf.shape == bn.weight.shape]
            if buffers:
                released = bn.weight.detach().abs() >= self.threshold
                for buf in buffers:
                    buf[released] = 0
                cleared += int(released.sum())
        if cleared:
            logger.info("sparsity: target reached; cleared the momentum of the %d γ released", cleared)
        return cleared

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state. The rate is recomputed from the weights, so this is informational + epoch."""
        return {
            "schedule": self.schedule.value,
            "s": self.s,
            "mode": int(self.mode),
            "epoch": self._epoch,
            "factor": self._factor,
            "fraction": self._fraction,
            "holding": self._holding,
            "released": self._released,
            # float32 values are exact in JSON's float64, so a resume ranks as the run did
            "importance": None if self._importance is None else [imp.cpu().tolist() for imp in self._importance],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if state.get("schedule", self.schedule.value) != self.schedule.value or int(state.get("mode", self.mode)) != self.mode:
            logger.warning(
                "resuming sparse training with schedule %s / --prune %d; the checkpoint used %s / --prune %s",
                self.schedule.value, int(self.mode), state.get("schedule"), state.get("mode"),
            )
            return
        self._epoch = state.get("epoch")
        self._factor = float(state.get("factor", 1.0))
        fraction = state.get("fraction")
        self._fraction = None if fraction is None else float(fraction)
        self._holding = bool(state.get("holding", False))
        self._released = bool(state.get("released", self._holding))
        importance = state.get("importance")
        if importance is not None and self.rank == "taylor":
            if [len(values) for values in importance] != [bn.weight.numel() for _, bn in self._bns]:
                logger.warning("resuming sparse training: the saved γ importance does not fit this model's prunable set; it starts afresh")
            else:
                self._importance = [
                    torch.tensor(values, dtype=torch.float32, device=bn.weight.device) for values, (_, bn) in zip(importance, self._bns)
                ]


# --------------------------------------------------------------------------------------------- stats


def _layer_list(layers: Iterable[int] | PrunableSet) -> list[int]:
    return list(layers.layers if isinstance(layers, PrunableSet) else layers)


def gamma_stats(model: nn.Module, layers: Iterable[int] | PrunableSet) -> dict[str, float | int]:
    """Distribution of |γ| over the given BN layers: how far sparsification has come.

    Keys: ``count``; ``frac_lt_1e-2`` and ``frac_lt_1e-3`` (fraction with |γ| strictly below);
    ``p1 p5 p25 p50 p75 p95`` (percentiles of |γ|, linear interpolation); ``mean``; ``max``.
    """
    index = _layer_list(layers)
    if not index:
        raise UsageError("gamma_stats needs at least one BN layer")
    gammas = _abs_gammas(_bn_modules(model, index)).double().cpu().numpy()
    stats: dict[str, float | int] = {"count": int(gammas.size)}
    for thr in STAT_THRESHOLDS:
        stats[f"frac_lt_{thr:.0e}".replace("e-0", "e-")] = float(np.mean(gammas < thr))
    for p, v in zip(STAT_PERCENTILES, np.percentile(gammas, STAT_PERCENTILES)):
        stats[f"p{p}"] = float(v)
    stats["mean"] = float(gammas.mean())
    stats["max"] = float(gammas.max())
    return stats


def plot_gamma_histogram(
    model: nn.Module, layers: Iterable[int] | PrunableSet, path: str | Path, title: str = "BN |γ|"
) -> Path:
    """Histogram of |γ| on a log axis, written atomically as a PNG. Returns the path.

    Exact zeros (and anything below 1e-8) are drawn in the first bin and counted in the legend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from edgeyolo.fileio import atomic_write_bytes

    index = _layer_list(layers)
    if not index:
        raise UsageError("plot_gamma_histogram needs at least one BN layer")
    gammas = _abs_gammas(_bn_modules(model, index)).double().cpu().numpy()
    floor = 1e-8
    tiny = int(np.sum(gammas < floor))
    values = np.maximum(gammas, floor)
    hi = max(float(values.max()), floor * 10)
    bins = np.logspace(math.log10(floor), math.log10(hi) + 1e-9, 80)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(values, bins=bins, color="#3b75af")
    ax.set_xscale("log")
    for thr, style in zip(STAT_THRESHOLDS, ("--", ":")):
        frac = float(np.mean(gammas < thr))
        ax.axvline(thr, color="#c0392b", linestyle=style, label=f"|γ| < {thr:g}: {frac:.1%}")
    if tiny:
        ax.plot([], [], " ", label=f"{tiny} at |γ| < {floor:g} (drawn at {floor:g})")
    ax.set_xlabel("|γ| (log scale)")
    ax.set_ylabel("channels")
    ax.set_title(f"{title} — {gammas.size} channels in {len(index)} layers")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(Path(path), buffer.getvalue())
