"""The build's stages: one class per stage, registered in the order a build runs them.

A stage says what enters its cache key (:meth:`~edgeyolo.pipeline.stage.Stage.params`), why it does not
apply to a build (``skip_reason``) and what it does (``run``). Its folder ``stages/NN-name`` is numbered
by its place in :data:`~edgeyolo.pipeline.stage.BUILD_STAGES`. A new stage is one class registered
with ``@BUILD_STAGES.register(name)``; it runs after those registered before it.
"""
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage, common_params, needs_data, stage_names

# imported in this order, so registered in it: a build runs them so and numbers their folders so
# isort: off
from edgeyolo.pipeline.stages import adapt  # noqa: E402, F401
from edgeyolo.pipeline.stages import train  # noqa: E402, F401
from edgeyolo.pipeline.stages import sparse  # noqa: E402, F401
from edgeyolo.pipeline.stages import prune  # noqa: E402, F401
from edgeyolo.pipeline.stages import finetune  # noqa: E402, F401
from edgeyolo.pipeline.stages import quantize  # noqa: E402, F401
from edgeyolo.pipeline.stages import export  # noqa: E402, F401
from edgeyolo.pipeline.stages import deploy  # noqa: E402, F401
# isort: on

__all__ = ["BUILD_STAGES", "Stage", "common_params", "needs_data", "stage_names"]
