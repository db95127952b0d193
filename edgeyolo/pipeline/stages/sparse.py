"""``sparse``: sparse training of the prunable BN γ (``sparse_epochs`` > 0)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeyolo.pipeline.core import Artifact
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage, common_params, needs_data
from edgeyolo.pipeline.stages.train import train_model

if TYPE_CHECKING:
    from edgeyolo.pipeline.build import Build


@BUILD_STAGES.register("sparse")
class SparseStage(Stage):
    """Records the fraction of the prunable γ below 1e-2 before and after."""

    name = "sparse"

    def params(self, build: Build) -> dict[str, Any]:
        r = build.recipe
        return {
            **common_params(build),
            "epochs": r.sparse_epochs, "s": r.s, "mode": r.prune_mode, "penalty": r.sr_penalty, "batch": r.batch_size,
            "schedule": r.sr_schedule, "target": r.sr_target, "ramp": r.sr_ramp, "rank": r.sr_rank, "size": r.training_size, "aug": r.aug,
        }

    def skip_reason(self, build: Build) -> str | None:
        return needs_data(build) if build.recipe.sparse_epochs > 0 else "recipe sparse_epochs is 0"

    def run(self, build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        r = build.recipe
        before = _gamma_fraction(art.cfg, art.weights, r.prune_mode)
        art, metrics = train_model(
            build, art, folder, r.sparse_epochs, sparse=True, s=r.s, prune=r.prune_mode, sr_penalty=r.sr_penalty,
            sr_schedule=r.sr_schedule, sr_target=r.sr_target, sr_ramp=r.sr_ramp, sr_rank=r.sr_rank,
        )
        after = _gamma_fraction(art.cfg, art.weights, r.prune_mode)
        return art, {"gamma_below_1e-2_before": round(before, 4), "gamma_below_1e-2_after": round(after, 4), **metrics}


def _gamma_fraction(cfg: Path, weights: Path, mode: int) -> float:
    """Fraction of the prunable BN |γ| (``--prune mode``'s set) below 1e-2."""
    from edgeyolo.compress.prune.prunable import prunable_bn
    from edgeyolo.model.checkpoint import load_model
    from edgeyolo.train.sparsity import gamma_stats

    model = load_model(cfg, weights)
    return float(gamma_stats(model, prunable_bn(model.cfg, mode))["frac_lt_1e-2"])
