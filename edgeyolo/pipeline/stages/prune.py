"""``prune``: channel pruning at the target's channel multiple, by a percent or to a latency budget."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeyolo.fileio import atomic_write_text
from edgeyolo.pipeline.core import MODEL_CFG, MODEL_WEIGHTS, Artifact
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage, common_params

if TYPE_CHECKING:
    from edgeyolo.pipeline.build import Build


@BUILD_STAGES.register("prune")
class PruneStage(Stage):
    """``--latency-ms`` replaces the percent: per-layer widths from the host's latency table."""

    name = "prune"

    def params(self, build: Build) -> dict[str, Any]:
        r, req = build.recipe, build.request
        return {
            **common_params(build),
            "method": r.prune_method, "percent": r.percent.given, "multiple": build.multiple(), "latency_ms": req.latency_ms,
            **({"rank": "loss"} if req.latency_ms else {}),
        }

    def skip_reason(self, build: Build) -> str | None:
        return None if build.recipe.prune_method != "none" or build.request.latency_ms else "recipe prune_method is none"

    def run(self, build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        from edgeyolo.compress.prune import PruneConfig, prune
        from edgeyolo.compress.prune.artifacts import write_artifacts
        from edgeyolo.model.checkpoint import load_model

        r = build.recipe
        model = load_model(art.cfg, art.weights)
        if build.request.latency_ms:
            return _prune_to_latency(build, model, folder)
        config = PruneConfig(r.prune_method, percent=r.percent.value, multiple=build.multiple())
        result = prune(model, config)
        write_artifacts(result, folder)
        return Artifact(folder), build.evaluate(folder / MODEL_CFG, folder / MODEL_WEIGHTS)


def _latency_mode(method: str) -> str:
    """The latency pruner's channel set for a recipe's method: ``slim`` for the methods of the residual-tied
    (shortcut) family, ``normal`` for the others and for ``none``."""
    from edgeyolo.compress.prune.methods import METHODS
    from edgeyolo.compress.prune.prunable import PruneMode

    family = METHODS.get(method).mode if method != "none" else None
    return "slim" if family is PruneMode.SHORTCUT else "normal"


def _prune_to_latency(build: Build, model, folder: Path) -> tuple[Artifact, dict[str, Any]]:
    """Per-layer widths that meet --latency-ms in onnxruntime on this host (bench.latency), ranked by
    each layer's measured loss increase on the training split; for a board target the host is the
    proxy, so the board's own number comes from the deploy stage."""
    from edgeyolo.bench import latency
    from edgeyolo.data.formats import load_dataset
    from edgeyolo.model.cfg import format_cfg
    from edgeyolo.model.checkpoint import save_checkpoint
    from edgeyolo.model.weights import save_darknet_weights

    r, req, profile = build.recipe, build.request, build.profile
    result = latency.prune_to_latency(
        model, req.latency_ms, r.img_size, multiple=build.multiple(), mode=_latency_mode(r.prune_method),
        cache_dir=build.out / "latency-table", damage=latency.loss_damage(load_dataset(build.data(), "train"), r.img_size, latency.DAMAGE_IMAGES),
    )
    atomic_write_text(folder / MODEL_CFG, format_cfg(result.model.cfg))
    save_checkpoint(result.model, folder / MODEL_WEIGHTS)
    save_darknet_weights(result.model, folder / "model.weights")
    metrics = {
        "latency_target_ms": req.latency_ms, "latency_predicted_ms": round(result.predicted_ms, 3),
        "latency_measured_ms": None if result.measured_ms is None else round(result.measured_ms, 3),
        "latency_unpruned_ms": None if result.unpruned_ms is None else round(result.unpruned_ms, 3),
        "latency_error": None if result.error is None else round(result.error, 4), "narrowed_convs": len(result.widths), "latency_rank": "loss",
        "latency_measured_on": "host onnxruntime" + ("" if profile.name == "host" else f" (a proxy for {profile.name})"),
    }
    return Artifact(folder), {**metrics, **build.evaluate(folder / MODEL_CFG, folder / MODEL_WEIGHTS)}
