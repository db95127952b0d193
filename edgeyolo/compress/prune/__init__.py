"""Channel and layer pruning of darknet-cfg models.

``prune(model, PruneConfig(method, ...))`` ranks channels (:mod:`.importance`), selects keep-masks
(:mod:`.selection`, :mod:`.methods`) and cuts the model with activation-offset compensation
(:mod:`.surgery`); :mod:`.report` explains the result and :mod:`.artifacts` writes it.
"""
from edgeyolo.compress.prune.importance import Importance
from edgeyolo.compress.prune.methods import (
    AUTO,
    METHODS,
    PruneConfig,
    PruneResult,
    applicability,
    parse_percent,
    prune,
)
from edgeyolo.compress.prune.surgery import Compact, Plan, apply_plan

__all__ = [
    "AUTO",
    "METHODS",
    "Compact",
    "Importance",
    "Plan",
    "PruneConfig",
    "PruneResult",
    "applicability",
    "apply_plan",
    "parse_percent",
    "prune",
]
