"""Target adaptation on the framework side: what a board cannot run of a model (cfg or ONNX checked
against a target profile's operator rules) and the model rewritten so that it can.

The profiles themselves are board-side data in ``edgeyolo.targets.profiles``; this package reads
them and works on cfgs and torch models, which the board side never imports.
"""
from edgeyolo.adapt.check import (
    STANDARD_DOMAINS,
    CheckFailed,
    CheckReport,
    Finding,
    Severity,
    check_cfg,
    check_onnx,
)
from edgeyolo.adapt.dpu import dpu_arch
from edgeyolo.adapt.rewrite import (
    EXACT_TOLERANCE,
    AdaptPlan,
    AdaptResult,
    Change,
    adapt_model,
    adapt_model_files,
    output_delta,
    plan_adaptation,
    pool_chain,
    transfer_weights,
    with_leaky_slope,
    write_adapted,
)

__all__ = [
    "EXACT_TOLERANCE", "STANDARD_DOMAINS", "AdaptPlan", "AdaptResult", "Change", "CheckFailed", "CheckReport", "Finding",
    "Severity", "adapt_model", "adapt_model_files", "check_cfg", "check_onnx", "dpu_arch", "output_delta",
    "plan_adaptation", "pool_chain", "transfer_weights", "with_leaky_slope", "write_adapted",
]
