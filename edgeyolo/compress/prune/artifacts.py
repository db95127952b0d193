"""The pruned model's folder: ``model.cfg``, ``model.weights``, ``model.safetensors``, the report and
its per-layer channel chart.

All files are written into a hidden staging folder beside ``out_dir`` and checked there (the
darknet pair must read back bit-exactly into a fresh model) before any is moved into ``out_dir``,
one rename per file: an error while writing or checking leaves ``out_dir`` as it was, and no file
in it is ever half-written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from edgeyolo.compress.prune.methods import PruneResult
from edgeyolo.compress.prune.report import build_report, channels_png, report_json, report_markdown
from edgeyolo.errors import VerificationError
from edgeyolo.model.cfg import format_cfg
from edgeyolo.model.checkpoint import Provenance, load_model, save_checkpoint
from edgeyolo.model.weights import save_darknet_weights

FILES = (
    "model.cfg",
    "model.weights",
    "model.safetensors",
    "prune_report.json",
    "prune_report.md",
    "prune_channels.png",
)


def _verify_darknet(result: PruneResult, folder: Path) -> None:
    fresh = load_model(folder / "model.cfg", folder / "model.weights")
    theirs = fresh.state_dict()
    for key, value in result.model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # darknet files do not store it
        if not torch.equal(value.detach().float().cpu(), theirs[key]):
            raise VerificationError(f"{folder / 'model.weights'}: {key} does not read back bit-exactly")


def write_artifacts(
    result: PruneResult,
    out_dir: str | Path,
    provenance: Provenance | None = None,
    report: dict[str, object] | None = None,
) -> list[Path]:
    """Write the pruned model and its report into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = report if report is not None else build_report(result)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "model.cfg").write_text(format_cfg(result.model.cfg), encoding="utf-8")
        save_darknet_weights(result.model, staging / "model.weights")
        extra = {"edgeyolo.prune": json.dumps(result.config.to_dict())}
        save_checkpoint(result.model, staging / "model.safetensors", provenance, extra=extra)
        (staging / "prune_report.json").write_text(report_json(report), encoding="utf-8")
        (staging / "prune_report.md").write_text(report_markdown(report), encoding="utf-8")
        (staging / "prune_channels.png").write_bytes(channels_png(report))
        _verify_darknet(result, staging)
        out.mkdir(exist_ok=True)
        for name in FILES:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in FILES]
