"""Trainer overhead: a real epoch's throughput against a bare forward+backward on a pre-loaded batch.

The trainer adds data loading, augmentation, target assignment, the loss, EMA, sparsity and logging;
the aim is that all of that costs at most 10 % over the bare step.
"""
from __future__ import annotations

import contextlib
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class StepBench:
    cfg: str
    img_size: int
    batch_size: int
    bare_img_per_s: float  # median over the rounds
    trainer_img_per_s: float  # median over the rounds
    rounds: tuple[tuple[float, float], ...] = ()  # (bare, trainer) img/s of each round, in order
    loss_img_per_s: float = 0.0  # median: the bare step with the YOLO loss instead of a mean
    loss_rounds: tuple[float, ...] = ()
    wait_rounds: tuple[float, ...] = ()  # the trainer's share of time waiting for batches, each round
    fault_rounds: tuple[tuple[float, float], ...] = ()  # (trainer, bare) minor page faults per step, each round

    @property
    def ratio(self) -> float:
        """trainer step time / bare step time: the median of the rounds' own ratios. A round's trainer
        epoch and bare steps run back to back, so a slow spell of the machine that spans both
        cancels in its ratio, where it would not in a ratio of two medians taken from different
        rounds. Without rounds, the ratio of the medians."""
        if self.rounds:
            return statistics.median(b / t for b, t in self.rounds)
        return self.bare_img_per_s / self.trainer_img_per_s

    @property
    def loss_share(self) -> float:
        """The part of :attr:`ratio` above 1 that the YOLO loss alone accounts for (step-time units;
        the median of the rounds' own shares, as for :attr:`ratio`)."""
        parts = self.round_parts()
        if parts:
            return statistics.median(loss for _, loss, _ in parts)
        return self.bare_img_per_s / self.loss_img_per_s - 1.0 if self.loss_img_per_s else float("nan")

    def round_parts(self) -> list[tuple[float, float, float]]:
        """Per round: (trainer / bare step time, the loss's part of it, the wait for batches' part),
        the parts in bare-step-time units like :attr:`loss_share`."""
        return [
            (b / t, b / lossy - 1.0, wait * b / t)
            for (b, t), lossy, wait in zip(self.rounds, self.loss_rounds, self.wait_rounds)
        ]

    @property
    def wait_share(self) -> float:
        """The part of :attr:`ratio` above 1 spent waiting for batches (step-time units, median)."""
        parts = self.round_parts()
        return statistics.median(wait for _, _, wait in parts) if parts else float("nan")

    @property
    def faults_per_step(self) -> tuple[float, float]:
        """Median minor page faults per step over the rounds: (trainer, bare); NaN without rounds."""
        if not self.fault_rounds:
            return float("nan"), float("nan")
        return statistics.median(t for t, _ in self.fault_rounds), statistics.median(b for _, b in self.fault_rounds)


def bench_train_step(
    cfg: str, img_size: int = 160, batch_size: int = 16, images: int = 256, workers: int = 2, threads: int = 0,
    sparse: bool = False, cache: bool = True, rounds: int = 3,
) -> StepBench:
    """Steady-state trainer throughput against the bare step on one pre-loaded real batch,
    interleaved: each round times one trainer epoch, then as many bare steps (the mean of the head
    outputs as the loss), then as many with the YOLO loss on the batch's labels, so a busy machine
    slows all alike; medians over ``rounds``. The trainer draws the CLI's progress bar (into
    /dev/null), as a run on a terminal does. The third rate splits the overhead into the loss and
    the rest (data, EMA, sparsity, logging); the trainer's own clock says how much of it was spent
    waiting for batches. A first, untimed epoch pays the workers' start-up, which a run pays once.
    Each round also counts the minor page faults per step of the training process (the trainer's
    including the batches it builds with ``workers=0``): memory handed back to the kernel and
    faulted in again (see :mod:`edgeyolo.heap`)."""
    from rich.console import Console

    from edgeyolo.data.synth import make_synthetic
    from edgeyolo.log import track
    from edgeyolo.model.checkpoint import load_model
    from edgeyolo.model.zoo import resolve_cfg
    from edgeyolo.train.loss import YoloLoss
    from edgeyolo.train.trainer import TrainConfig, Trainer

    if threads:
        torch.set_num_threads(threads)
    cfg_path = str(resolve_cfg(cfg))
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        classes = load_model(cfg_path).num_classes
        data = make_synthetic(Path(tmp) / "synth", classes=classes, train=images, val=4, img_size=img_size, seed=0).data_yaml
        config = TrainConfig(
            data=str(data), cfg=cfg_path, img_size=img_size, batch_size=batch_size, epochs=rounds + 1, workers=workers,
            out=tmp, name="run", sparse=sparse, cache=cache,
        )
        sink = stack.enter_context(open(os.devnull, "w"))
        console = Console(file=sink, force_terminal=True)  # the CLI's progress bar, drawn into the void
        trainer = Trainer(config, progress=lambda items, description, total: track(items, description, total, console))
        trainer.validate = lambda: None  # time the training loop only
        trainer.train_epoch(0, trainer.accumulate)

        model = load_model(cfg_path).train()
        criterion = YoloLoss(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        x, targets, _ = next(iter(trainer._batches(0)))  # one real batch, pre-loaded
        steps = max(images // batch_size, 2)

        def bare() -> torch.Tensor:
            return sum(r.float().mean() for r in model(x))

        def with_loss() -> torch.Tensor:
            return criterion(model(x), targets, img_size, img_size)[0]

        def rate(loss_fn) -> float:
            start = time.perf_counter()
            for _ in range(steps):
                loss_fn().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return steps * batch_size / (time.perf_counter() - start)

        for fn in (bare, with_loss):
            fn().backward()
        def faults() -> int:
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

        trainer_steps = len(trainer._loader)  # batches per epoch, the same in every epoch
        measured, loss_rates, waits, fault_counts = [], [], [], []
        for epoch in range(1, rounds + 1):
            before = faults()
            record = trainer.train_epoch(epoch, trainer.accumulate)
            between = faults()
            measured.append((rate(bare), record.images_per_s))
            fault_counts.append(((between - before) / trainer_steps, (faults() - between) / steps))
            loss_rates.append(rate(with_loss))
            waits.append(record.data_wait)
        trainer._loader = None  # stop the workers
    bare_rate = statistics.median(b for b, _ in measured)
    timed = statistics.median(t for _, t in measured)
    return StepBench(
        cfg, img_size, batch_size, bare_rate, timed, tuple(measured), statistics.median(loss_rates), tuple(loss_rates), tuple(waits),
        tuple(fault_counts),
    )
