"""Deep pruning in steps: most of the parameters (or BFLOPs) gone, against the dense model trained as long.

One cut straight to a fifth of the model leaves too little for a short fine-tune to recover from, so
:func:`deep_prune` walks there in ``steps`` cuts, each followed by a few fine-tune epochs:

1. the kept fraction of step ``i`` is ``keep ** (i / steps)`` of the unpruned size (a geometric walk:
   each step removes the same share of what is left);
2. each cut chooses per-layer widths with the budget selection of latency-targeted pruning
   (:class:`edgeyolo.compress.prune.budget.SensitivityPath`), with the size model
   (:class:`~edgeyolo.compress.prune.budget.SizeModel`: parameters, or BFLOPs with ``size="bflops"``)
   as the cost: every width variable's loss increase is measured on training images (a residual
   channel space is one variable, its members cut alike), measured again as the cut deepens, and
   the channels whose removal costs least loss per parameter go first;
3. the pruned model is fine-tuned for that step's epochs (``edgeyolo train`` with the
   :class:`~edgeyolo.bench.prune.FineTune` settings).

The control is the unpruned model fine-tuned for the same total epochs with the same settings: a
model still gaining accuracy would otherwise make any pruning look cheaper than it is.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeyolo.bench.latency import DAMAGE_IMAGES, loss_damage
from edgeyolo.bench.prune import FineTune, _finetune, _time_models
from edgeyolo.compress.prune import apply_plan
from edgeyolo.compress.prune.budget import (
    SensitivityPath,
    SizeModel,
    conv_widths,
    variable_scores,
    width_plan,
    width_variables,
)
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import total_bflops
from edgeyolo.model.darknet import Darknet

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class DeepRow:
    """One model of the walk (or the control): size, latency and mAP@0.5 before and after its fine-tune."""

    name: str
    goal: float | None  # kept fraction of the unpruned size asked for
    params: int
    bflops: float
    map50_cut: float | None  # right after the cut (None: the control and the unpruned model)
    map50: float  # after the fine-tune (the unpruned model: as given)
    epochs: int  # fine-tune epochs so far
    seconds: float  # wall time of the cut (sensitivity included) and the fine-tune
    infer_ms: float | None = None  # onnxruntime p50, all models interleaved


def walk(keep: float, steps: int) -> list[float]:
    """The kept fraction after each step: ``keep ** (i / steps)``, i = 1 … steps."""
    if not 0 < keep < 1:
        raise UsageError(f"the kept fraction must be in (0, 1), got {keep:g}")
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}")
    return [keep ** (i / steps) for i in range(1, steps + 1)]


def deep_prune(
    model: Darknet,
    train,
    val,
    tune: FineTune,
    img_size: int,
    keep: float = 0.2,
    epochs: Sequence[int] = (3, 3, 4),
    size: str = "params",
    mode: str = "slim",
    multiple: int = 8,
    control: bool = True,
    damage_images: int = DAMAGE_IMAGES,
    latency_runs: int = 50,
    threads: int = 2,
    progress: Callable[[range], range] | None = None,
) -> tuple[Darknet, list[DeepRow]]:
    """``model`` pruned to ``keep`` of its ``size`` in ``len(epochs)`` steps, each fine-tuned for its
    ``epochs[i]``; rows for the unpruned model, every step and (``control``) the dense model
    fine-tuned for ``sum(epochs)``. ``train``/``val``: the datasets the loss is measured on and the
    mAP scored on; ``tune.data`` is what the fine-tunes train on."""
    from edgeyolo.runtime.evaluate import evaluate_model

    if any(e < 0 for e in epochs) or not epochs:
        raise UsageError(f"give each step's fine-tune epochs (>= 0), got {list(epochs)}")
    goals = walk(keep, len(epochs))

    def score(net: Darknet) -> float:
        return float(evaluate_model(net, val, img_size, "onnxruntime", "coco", threads=threads).result.map50)

    def tuned(net: Darknet, n: int) -> Darknet:
        if n == 0:
            return net
        with tempfile.TemporaryDirectory(prefix="edgeyolo-deep-") as tmp:
            return _finetune(net, dataclasses.replace(tune, epochs=n), img_size, Path(tmp))[0]

    full = SizeModel.of(model.cfg, img_size, size).predict()
    damage = loss_damage(train, img_size, damage_images)
    rows = [DeepRow("unpruned", None, model.parameter_count(), total_bflops(model.cfg, img_size), None, score(model), 0, 0.0)]
    models = {"unpruned": model}
    current, done = model, 0
    for i, (goal, n) in enumerate(zip(goals, epochs), 1):
        start = time.perf_counter()
        variables, _ = width_variables(current.cfg, mode, multiple)
        scores = variable_scores(current, variables)
        sizer = SizeModel.of(current.cfg, img_size, size)
        path = SensitivityPath(current, sizer.predict, variables, scores, damage, multiple, progress=progress)
        choice = path.select(goal * full)
        cut = apply_plan(current, width_plan(variables, scores, choice.widths)).model.eval()
        assert abs(SizeModel.of(cut.cfg, img_size, size).predict() - sizer.predict(conv_widths(variables, choice.widths))) <= 1e-6 * full
        at_cut = score(cut)
        current, done = tuned(cut, n).eval(), done + n
        name = f"step {i}"
        models[name] = current
        rows.append(
            DeepRow(name, goal, current.parameter_count(), total_bflops(current.cfg, img_size), at_cut, score(current), done, time.perf_counter() - start)
        )
        logger.info("%s: %d parameters, mAP@0.5 %.4f at the cut, %.4f after %d epochs", name, rows[-1].params, at_cut, rows[-1].map50, n)
    if control:
        start = time.perf_counter()
        dense = tuned(model, done).eval()
        models["dense control"] = dense
        rows.append(
            DeepRow("dense control", None, dense.parameter_count(), total_bflops(dense.cfg, img_size), None, score(dense), done, time.perf_counter() - start)
        )
    if latency_runs > 0:
        timed = {r.backend: r.infer.median_ms for r in _time_models(models, img_size, threads, latency_runs)}
        rows = [dataclasses.replace(r, infer_ms=timed.get(r.name)) for r in rows]
    return current, rows
