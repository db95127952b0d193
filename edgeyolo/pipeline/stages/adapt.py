"""``adapt``: rewrite the cfg for what the target can run (``edgeyolo adapt``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeyolo.pipeline.core import MODEL_CFG, MODEL_WEIGHTS, Artifact
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage, common_params

if TYPE_CHECKING:
    from edgeyolo.pipeline.build import Build


@BUILD_STAGES.register("adapt")
class AdaptStage(Stage):
    """Skipped when the target runs the cfg as it is, numerics included (the DPU's leaky slope)."""

    name = "adapt"

    def params(self, build: Build) -> dict[str, Any]:
        return {**common_params(build), "target": build.profile.name}

    def skip_reason(self, build: Build) -> str | None:
        return None if _adapt_needed(build) else f"{build.profile.name} runs the cfg as it is"

    def run(self, build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        from edgeyolo.adapt.rewrite import adapt_model_files
        from edgeyolo.model.checkpoint import load_model, save_checkpoint

        changes = adapt_model_files(build.profile, art.cfg, art.weights, folder, img_size=build.recipe.img_size)
        save_checkpoint(load_model(folder / MODEL_CFG, folder / "model.weights"), folder / MODEL_WEIGHTS)
        metrics: dict[str, Any] = {"changes": len(changes)}
        before, after = build.evaluate(art.cfg, art.weights), build.evaluate(folder / MODEL_CFG, folder / MODEL_WEIGHTS)
        if before and after:  # the accuracy the rewrite costs, before any fine-tuning
            metrics["map50_before_adapt"] = before["map50"]
        return Artifact(folder), {**metrics, **after}


def _adapt_needed(build: Build) -> bool:
    from edgeyolo.adapt.check import check_cfg
    from edgeyolo.model.cfg import parse_cfg

    # strict: also numerics the target changes (the DPU's leaky slope), so adapt reports the delta
    return check_cfg(parse_cfg(build.cfg_path()), build.profile).failed(strict=True)
