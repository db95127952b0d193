"""``finetune``: fine-tune the pruned model (distilled from the unpruned one with ``kd``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeyolo.pipeline.core import Artifact
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage, common_params, needs_data
from edgeyolo.pipeline.stages.train import train_model

if TYPE_CHECKING:
    from edgeyolo.pipeline.build import Build


@BUILD_STAGES.register("finetune")
class FinetuneStage(Stage):
    name = "finetune"

    def params(self, build: Build) -> dict[str, Any]:
        r = build.recipe
        return {**common_params(build), "epochs": r.finetune_epochs, "kd": r.kd, "batch": r.batch_size, "size": r.training_size, "aug": r.aug}

    def skip_reason(self, build: Build) -> str | None:
        r = build.recipe
        return needs_data(build) if r.finetune_epochs > 0 and r.prune_method != "none" else "recipe finetune_epochs is 0 or nothing pruned"

    def run(self, build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        extra: dict[str, Any] = {}
        if build.recipe.kd is not None:
            teacher = _model_before_prune(build)
            extra = {"t_cfg": str(teacher.cfg), "t_weights": str(teacher.weights), "kd_strategy": build.recipe.kd}
        return train_model(build, art, folder, build.recipe.finetune_epochs, **extra)


def _model_before_prune(build: Build) -> Artifact:
    """The last model a stage before ``prune`` wrote (the source's if none): the fine-tune's teacher."""
    names = [r.name for r in build.records]
    before = build.records[: names.index("prune")] if "prune" in names else build.records
    for record in reversed(before):
        if "model" in record.outputs:
            return Artifact(build.stage_folder(record.name))
    return Artifact(build.out / "stages" / "source")
