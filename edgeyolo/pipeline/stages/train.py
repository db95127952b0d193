"""``train``: train from scratch or fine-tune the given weights (``train_epochs`` > 0); the training
run that ``sparse`` and ``finetune`` share."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeyolo.fileio import atomic_write_text
from edgeyolo.pipeline.core import MODEL_CFG, MODEL_WEIGHTS, Artifact
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage, common_params, needs_data

if TYPE_CHECKING:
    from edgeyolo.pipeline.build import Build


@BUILD_STAGES.register("train")
class TrainStage(Stage):
    name = "train"

    def params(self, build: Build) -> dict[str, Any]:
        r = build.recipe
        return {**common_params(build), "epochs": r.train_epochs, "batch": r.batch_size, "device": build.request.train_device,
                "size": r.training_size, "aug": r.aug}

    def skip_reason(self, build: Build) -> str | None:
        return needs_data(build) if build.recipe.train_epochs > 0 else "recipe train_epochs is 0"

    def run(self, build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        return train_model(build, art, folder, build.recipe.train_epochs, pretrained=False)


def train_model(build: Build, art: Artifact, folder: Path, epochs: int, **extra: Any) -> tuple[Artifact, dict[str, Any]]:
    """Train ``art`` for ``epochs`` on the build's data (``extra``: more TrainConfig fields) into ``folder``."""
    from edgeyolo.model.cfg import format_cfg
    from edgeyolo.model.checkpoint import checkpoint_cfg
    from edgeyolo.train.trainer import TrainConfig, Trainer

    r = build.recipe
    build.check_data()  # broken labels fail here, not minutes into training
    config = TrainConfig(
        data=build.data(), cfg=str(art.cfg), weights=str(art.weights), img_size=r.training_size, batch_size=r.batch_size,
        epochs=epochs, device=build.request.train_device, out=str(folder), name="run", workers=r.workers, seed=r.seed,
        cache=r.cache, max_val_images=r.max_val_images, aug=dict(r.aug), **extra,
    )
    trainer = Trainer(config, run_dir=folder / "run", on_epoch=lambda rec: build.echo("  " + rec.line()))
    history = trainer.fit()
    best = folder / "run" / ("last.safetensors" if config.sparse else "best.safetensors")
    if not best.exists():
        best = folder / "run" / "last.safetensors"
    atomic_write_text(folder / MODEL_CFG, format_cfg(checkpoint_cfg(best)))
    shutil.copyfile(best, folder / MODEL_WEIGHTS)
    last = history[-1] if history else {}
    metrics: dict[str, Any] = {"epochs": epochs, "val_map50_last_epoch": last.get("map50")}
    return Artifact(folder), {**metrics, **build.evaluate(folder / MODEL_CFG, folder / MODEL_WEIGHTS)}
