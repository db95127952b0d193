"""``edgeyolo build``: a target's recipe of stages, each cached by the hash of its inputs.

Stages, in order (a stage that does not apply is recorded as skipped, with the reason):

    adapt     rewrite the cfg for what the target can run (``edgeyolo adapt``)
    source    the starting model: the given weights, the demo's shipped checkpoint, or seeded random init
    train     train from scratch or fine-tune the given weights (``train_epochs`` > 0)
    sparse    sparse training of the prunable BN γ (``sparse_epochs`` > 0)
    prune     channel pruning at the target's channel multiple
    finetune  fine-tune the pruned model (distilled from the unpruned one with ``kd``)
    quantize  int8 post-training quantization (int8 precision only)
    export    the artifact the target runs: ONNX (fp32/fp16: TensorRT builds the engine on the
              board), QDQ ONNX (int8)
    deploy    upload + benchmark (FPS, latency, mAP) on a named device

A stage's key is the sha256 of its name, its parameters, the key of the stage before it and the
sha256 of the files it reads. Its folder ``stages/NN-name/`` holds its outputs and ``stage.json``,
written last; a later build with the same key reuses the folder instead of running the stage. The
build folder gets ``manifest.json`` (every stage: status, key, wall time, metrics, outputs) and
``report.md``.

Where each part lives: :mod:`.recipe` (the recipe and its typed percent), :mod:`.core` (the request,
the artifact passed between stages, a stage's record and key), :mod:`.stages` (one module per stage,
registered in order in :data:`.stage.BUILD_STAGES`), :mod:`.build` (the run and the manifest) and
:mod:`.report` (``report.md``).
"""
from __future__ import annotations

from edgeyolo.pipeline.build import HEARTBEAT_S, Build
from edgeyolo.pipeline.core import (
    MANIFEST_FILE,
    MODEL_CFG,
    MODEL_WEIGHTS,
    PRECISIONS,
    REPORT_FILE,
    STAGE_FILE,
    Artifact,
    BuildRequest,
    StageRecord,
    stage_key,
)
from edgeyolo.pipeline.evaluation import fp16_rounded as _fp16_rounded
from edgeyolo.pipeline.recipe import DEMO_CFG, Percent, Recipe, demo_recipe
from edgeyolo.pipeline.report import next_steps, report_markdown
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage, stage_names

__all__ = [
    "BUILD_STAGES",
    "DEMO_CFG",
    "HEARTBEAT_S",
    "MANIFEST_FILE",
    "MODEL_CFG",
    "MODEL_WEIGHTS",
    "PRECISIONS",
    "REPORT_FILE",
    "STAGES",
    "STAGE_FILE",
    "Artifact",
    "Build",
    "BuildRequest",
    "Percent",
    "Recipe",
    "Stage",
    "StageRecord",
    "_fp16_rounded",
    "demo_recipe",
    "next_steps",
    "report_markdown",
    "stage_key",
    "stage_names",
]


def __getattr__(name: str):
    if name == "STAGES":  # the registered stages' names, in order, as they are now
        return stage_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
