"""Trainer overhead: a real epoch's throughput against a bare forward+backward on a pre-loaded batch.

The trainer adds data loading, augmentation, target assignment, the loss, EMA, sparsity and logging;
the aim is that all of that costs at most 10 % over the bare step.
"""
from __future__ import annotations

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

    @property
    def ratio(self) -> float:
        """trainer step time / bare step time (medians)."""
        return self.bare_img_per_s / self.trainer_img_per_s


def bench_train_step(
    cfg: str, img_size: int = 160, batch_size: int = 16, images: int = 256, workers: int = 2, threads: int = 0,
    sparse: bool = False, cache: bool = True, rounds: int = 3,
) -> StepBench:
    """Steady-state trainer throughput against the bare step on one pre-loaded batch, interleaved:
    each round times one trainer epoch, then as many bare steps, so a busy machine slows both alike;
    medians over ``rounds``. A first, untimed epoch pays the workers' start-up, which a run pays once."""
    import statistics

    from edgeyolo.data.synth import make_synthetic
    from edgeyolo.model.checkpoint import load_model
    from edgeyolo.model.zoo import resolve_cfg
    from edgeyolo.train.trainer import TrainConfig, Trainer

    if threads:
        torch.set_num_threads(threads)
    cfg_path = str(resolve_cfg(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        classes = load_model(cfg_path).num_classes
        data = make_synthetic(Path(tmp) / "synth", classes=classes, train=images, val=4, img_size=img_size, seed=0).data_yaml
        config = TrainConfig(
            data=str(data), cfg=cfg_path, img_size=img_size, batch_size=batch_size, epochs=rounds + 1, workers=workers,
            out=tmp, name="run", sparse=sparse, cache=cache,
        )
        trainer = Trainer(config)
        trainer.validate = lambda: None  # time the training loop only
        trainer.train_epoch(0, trainer.accumulate)

        model = load_model(cfg_path).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        x = torch.rand(batch_size, model.cfg.net.channels, img_size, img_size)
        steps = max(images // batch_size, 2)
        for _ in range(2):
            sum(r.float().mean() for r in model(x)).backward()
        measured = []
        for epoch in range(1, rounds + 1):
            trainer_rate = trainer.train_epoch(epoch, trainer.accumulate).images_per_s
            start = time.perf_counter()
            for _ in range(steps):
                sum(r.float().mean() for r in model(x)).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            measured.append((steps * batch_size / (time.perf_counter() - start), trainer_rate))
        trainer._loader = None  # stop the workers
    bare = statistics.median(b for b, _ in measured)
    timed = statistics.median(t for _, t in measured)
    return StepBench(cfg, img_size, batch_size, bare, timed, tuple(measured))
