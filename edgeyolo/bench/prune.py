"""Pruning benchmarks: how long each method takes, and what a FLOPs cut buys in onnxruntime latency.

``prune_speed`` times selection + graph surgery only (what :func:`edgeyolo.compress.prune.prune`
measures), never the model load, the random init or an evaluation: the aim is under 5 s per method
on yolov4. ``prune_latency`` compares ``normal`` with ``regular`` at matched FLOPs: the two differ
only in whether kept channel counts are multiples of ``--multiple``, so a latency gap between them is
the price of unaligned widths (measured-facts.md: convs whose channels are not multiples of 8 fall
out of onnxruntime's blocked kernels).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from edgeyolo.bench.host import BackendResult, StageStats, bench_host
from edgeyolo.compress.prune import AUTO, METHODS, PruneConfig, PruneResult, prune
from edgeyolo.compress.prune.methods import Percent
from edgeyolo.contract import Contract, channel_order_for
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import Cfg, total_bflops
from edgeyolo.model.darknet import Darknet
from edgeyolo.model.init import synthetic_images
from edgeyolo.runtime.runners import OnnxRuntimeRunner

logger = logging.getLogger(__name__)

#: relative BFLOPs gap up to which ``regular`` counts as matched to ``normal``
MATCH_TOLERANCE = 0.02
ALIGNMENT = 8  # channel block of onnxruntime's fast fp32 conv kernels (x86 AVX2)


@dataclass(frozen=True)
class SpeedRow:
    """One method's selection + surgery time; ``error`` says why it refused (then no time)."""

    method: str
    seconds: float | None  # median over the repeats
    stages: int
    conv_channels: tuple[int, int]
    bflops: tuple[float, float]
    error: str | None = None
    cli_seconds: float | None = None  # the whole `edgeyolo prune` command: start-up, model load or init, files


def cli_prune_seconds(method: str, cfg: str, weights: str | None, percent: str | None, shortcuts: int) -> float:
    """Wall time of ``edgeyolo prune`` as a user runs it (a fresh process writing into a temporary folder)."""
    import subprocess
    import sys
    import tempfile
    import time

    with tempfile.TemporaryDirectory(prefix="edgeyolo-prune-speed-") as tmp:
        args = [sys.executable, "-m", "edgeyolo.cli.app", "prune", method, "--cfg", cfg, "--out", f"{tmp}/out",
                *(["--weights", weights] if weights else ["--random-init"]), "--shortcuts", str(shortcuts),
                *(["--percent", percent] if percent is not None and method != "layer" else [])]
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise UsageError(f"edgeyolo prune {method} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return seconds


def _channels(cfg: Cfg) -> int:
    return sum(c.filters for c in cfg.conv_layers)


def prune_speed(
    model: Darknet,
    methods: Sequence[str] | None = None,
    percent: Percent | None = None,
    shortcuts: int = 8,
    repeats: int = 1,
) -> list[SpeedRow]:
    """Selection + surgery wall time of each method (all registered ones by default) on ``model``."""
    if repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {repeats}")
    rows = []
    before = (_channels(model.cfg), total_bflops(model.cfg))
    for method in methods or METHODS.names():
        config = PruneConfig(method, percent=None if method == "layer" else percent, shortcuts=shortcuts)
        try:
            results = [prune(model, config) for _ in range(repeats)]
        except UsageError as error:
            rows.append(SpeedRow(method, None, 0, (before[0], before[0]), (before[1], before[1]), str(error)))
            continue
        cfg = results[0].model.cfg
        rows.append(
            SpeedRow(
                method,
                statistics.median(r.seconds for r in results),
                len(results[0].stages),
                (before[0], _channels(cfg)),
                (before[1], total_bflops(cfg)),
            )
        )
    return rows


@dataclass(frozen=True)
class LatencyRow:
    """One model's onnxruntime inference latency, against the unpruned model's."""

    name: str
    percent: float | None  # None: the unpruned model
    gflops: float  # conv FLOPs (2·MAC) at the benchmark's input size
    misaligned: int  # convs whose output channels are not a multiple of ALIGNMENT
    infer: StageStats
    flops_ratio: float  # gflops / the unpruned model's
    latency_ratio: float  # median latency / the unpruned model's

    @property
    def speedup(self) -> float:
        return 1.0 / self.latency_ratio

    @property
    def exponent(self) -> float | None:
        """α in latency ∝ FLOPs^α between this model and the unpruned one (1: latency follows FLOPs)."""
        if self.flops_ratio >= 1.0:
            return None
        return math.log(self.latency_ratio) / math.log(self.flops_ratio)


def _gflops(model: Darknet, img_size: int) -> float:
    return total_bflops(model.cfg, img_size, conv_only=True)


def match_regular(model: Darknet, target_gflops: float, img_size: int, multiple: int) -> PruneResult:
    """The ``regular`` pruning whose conv FLOPs at ``img_size`` come closest to ``target_gflops``.

    Rounding kept counts up to multiples never adds back what a larger removal count took away, so
    FLOPs fall monotonically with the count and a bisection finds the closest one in ~log2(N) prunes.
    """
    deepest = prune(model, PruneConfig("regular", percent=AUTO, multiple=multiple))
    ranking = deepest.stages[0].selection.rankings["all"]
    total, safe = ranking.channels, round(ranking.percent * ranking.channels)
    tried = {safe: deepest}

    def at(count: int) -> PruneResult:
        if count not in tried:
            tried[count] = prune(model, PruneConfig("regular", percent=count / total, multiple=multiple))
        return tried[count]

    lo, hi = 0, safe  # the smallest count at or below the target (or the deepest safe one)
    while lo < hi:
        mid = (lo + hi) // 2
        if _gflops(at(mid).model, img_size) <= target_gflops:
            hi = mid
        else:
            lo = mid + 1
    candidates = [at(lo)] + ([at(lo - 1)] if lo > 0 else [])
    return min(candidates, key=lambda r: abs(_gflops(r.model, img_size) - target_gflops))


def _time_models(
    models: dict[str, Darknet],
    img_size: int,
    threads: int,
    runs: int,
    warmup: int = 3,
    progress: Callable[[range], range] | None = None,
) -> list[BackendResult]:
    """Each model exported to onnxruntime and timed on ``threads`` threads, the models interleaved
    run by run as :func:`edgeyolo.bench.host.bench_host` does, so a busy machine slows them alike.
    Results come in ``models``' order."""
    contract = Contract(img_size, img_size, channel_order=channel_order_for(next(iter(models.values())).cfg.net.channels))
    runners = {name: OnnxRuntimeRunner(m, contract, threads) for name, m in models.items()}
    gflops = {name: _gflops(m, img_size) for name, m in models.items()}
    try:
        images = synthetic_images(8, img_size, img_size, seed=0)
        return bench_host(runners, contract, images, gflops, runs=runs, warmup=warmup, threads=threads, progress=progress)
    finally:
        for runner in runners.values():
            runner.close()


def prune_latency(
    model: Darknet,
    img_size: int = 256,
    percent: float = 0.5,
    multiple: int = 8,
    threads: int = 2,
    runs: int = 50,
    warmup: int = 3,
    progress: Callable[[range], range] | None = None,
) -> list[LatencyRow]:
    """Latency of the unpruned model, ``normal`` at ``percent`` and ``regular`` at matched FLOPs.

    Each model is exported through :func:`edgeyolo.export.onnx.export_onnx` (verified against torch)
    and timed in onnxruntime on ``threads`` threads, the models interleaved run by run as
    :func:`edgeyolo.bench.host.bench_host` does, so a busy machine slows them alike.
    """
    normal = prune(model, PruneConfig("normal", percent=percent))
    target = _gflops(normal.model, img_size)
    regular = match_regular(model, target, img_size, multiple)
    gap = abs(_gflops(regular.model, img_size) - target) / target
    if gap > MATCH_TOLERANCE:
        logger.warning("regular --multiple %d comes only within %.1f%% of normal's FLOPs", multiple, 100 * gap)
    models = {
        "unpruned": (model, None),
        "normal": (normal.model, percent),
        f"regular --multiple {multiple}": (regular.model, _applied_percent(regular)),
    }
    gflops = {name: _gflops(m, img_size) for name, (m, _) in models.items()}
    timed = _time_models({name: m for name, (m, _) in models.items()}, img_size, threads, runs, warmup, progress)
    base = timed[0].infer.median_ms
    rows = []
    for r in timed:
        net, applied = models[r.backend]
        misaligned = sum(1 for c in net.cfg.conv_layers if c.filters % ALIGNMENT)
        rows.append(
            LatencyRow(
                r.backend,
                applied,
                gflops[r.backend],
                misaligned,
                r.infer,
                gflops[r.backend] / gflops["unpruned"],
                r.infer.median_ms / base,
            )
        )
    return rows


def _applied_percent(result: PruneResult) -> float:
    return result.stages[0].selection.rankings["all"].percent


@dataclass(frozen=True)
class AccuracyRow:
    """One method on a trained model: size, and mAP@0.5 before, right after pruning and (when asked
    for) after a short fine-tune of the pruned model."""

    method: str
    params: tuple[int, int]
    bflops: tuple[float, float]
    map50: tuple[float, float]
    error: str | None = None
    map50_finetuned: float | None = None
    finetune_seconds: float | None = None
    infer_ms: tuple[float, float] | None = None  # onnxruntime p50 latency, unpruned and pruned

    @property
    def params_cut(self) -> float:
        return 1.0 - self.params[1] / self.params[0]


@dataclass(frozen=True)
class FineTune:
    """A short fine-tune of each pruned model on ``data`` (a dataset file ``edgeyolo train`` reads)."""

    data: str
    epochs: int = 2
    lr0: float = 0.002  # a pruned model starts close to its optimum: no large steps
    burn_in: int = 20
    batch_size: int = 16
    workers: int = 2


def _finetune(model: Darknet, tune: FineTune, img_size: int, folder: Path) -> tuple[Darknet, float]:
    """Train a copy of ``model`` for ``tune.epochs``; returns the EMA model and the wall time."""
    from edgeyolo.fileio import atomic_write_text
    from edgeyolo.model.cfg import format_cfg
    from edgeyolo.model.checkpoint import save_checkpoint
    from edgeyolo.train.trainer import TrainConfig, Trainer

    folder.mkdir(parents=True, exist_ok=True)
    cfg_file = atomic_write_text(folder / "model.cfg", format_cfg(model.cfg))
    weights = save_checkpoint(model, folder / "model.safetensors")
    config = TrainConfig(
        data=tune.data, cfg=str(cfg_file), weights=str(weights), img_size=img_size, batch_size=tune.batch_size,
        epochs=tune.epochs, workers=tune.workers, out=str(folder), name="finetune", lr0=tune.lr0, burn_in=tune.burn_in,
    )
    start = time.perf_counter()
    trainer = Trainer(config)
    trainer.validate = lambda: None  # scored once, below, like every other column
    trainer.fit()
    return trainer.weights_model.eval(), time.perf_counter() - start


def prune_accuracy(
    model: Darknet,
    dataset,
    img_size: int,
    methods: Sequence[str] | None = None,
    percent: Percent | None = AUTO,
    shortcuts: int = 1,
    backend: str = "onnxruntime",
    threads: int = 0,
    finetune: FineTune | None = None,
    latency_runs: int = 0,
) -> list[AccuracyRow]:
    """mAP@0.5 on ``dataset`` (``edgeyolo test``'s evaluation) of ``model`` and of each method's pruned
    model at ``percent`` (the largest safe one by default), with parameters and BFLOPs at ``img_size``;
    with ``finetune``, also after that short fine-tune of each pruned model; with ``latency_runs``,
    the onnxruntime latency of every model, timed interleaved as ``prune_latency`` does."""
    import tempfile

    from edgeyolo.runtime.evaluate import evaluate_model

    def score(net: Darknet) -> float:
        return float(evaluate_model(net, dataset, img_size, backend, "coco", threads=threads).result.map50)

    base_params, base_bflops, base_map = model.parameter_count(), total_bflops(model.cfg, img_size), score(model)
    rows = []
    pruned_models: dict[str, Darknet] = {}
    for name in methods or METHODS.names():
        channel_percent = None if name == "layer" else percent
        try:
            result = prune(model, PruneConfig(name, percent=channel_percent, shortcuts=shortcuts))
        except UsageError as error:
            rows.append(AccuracyRow(name, (base_params, base_params), (base_bflops, base_bflops), (base_map, base_map), str(error)))
            continue
        pruned = pruned_models[name] = result.model
        tuned, seconds = None, None
        if finetune is not None:
            with tempfile.TemporaryDirectory(prefix="edgeyolo-finetune-") as tmp:
                trained, seconds = _finetune(pruned, finetune, img_size, Path(tmp))
                tuned = score(trained)
        rows.append(
            AccuracyRow(
                name,
                (base_params, pruned.parameter_count()),
                (base_bflops, total_bflops(pruned.cfg, img_size)),
                (base_map, score(pruned)),
                map50_finetuned=tuned,
                finetune_seconds=seconds,
            )
        )
    if latency_runs > 0 and pruned_models:
        timed = _time_models({"unpruned": model, **pruned_models}, img_size, threads or 2, latency_runs)
        latency = {r.backend: r.infer.median_ms for r in timed}
        rows = [r if r.method not in latency else dataclasses.replace(r, infer_ms=(latency["unpruned"], latency[r.method])) for r in rows]
    return rows
