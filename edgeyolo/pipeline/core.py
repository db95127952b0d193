"""What a build is made of: the request, the artifact passed from stage to stage, a stage's record and
its cache key."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgeyolo.errors import UsageError
from edgeyolo.fileio import sha256_file as file_sha256
from edgeyolo.pipeline.recipe import Recipe

PRECISIONS = ("fp32", "fp16", "int8")
STAGE_FILE = "stage.json"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.md"
MODEL_CFG, MODEL_WEIGHTS = "model.cfg", "model.safetensors"


@dataclass(frozen=True)
class BuildRequest:
    target: str
    out: Path
    cfg: Optional[str] = None
    weights: Optional[str] = None
    data: Optional[str] = None
    precision: Optional[str] = None  # default: the target's preferred precision
    recipe: Recipe = field(default_factory=Recipe)
    device: Optional[str] = None  # inventory name: deploy + bench there
    inventory: Optional[str] = None
    train_device: str = "cpu"
    demo: bool = False
    latency_ms: Optional[float] = None  # prune to this onnxruntime latency on this host instead of a percent
    trust_new_host_key: bool = False  # deploy: record an unknown board's host key instead of refusing it

    def __post_init__(self) -> None:
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise UsageError(f"--latency-ms must be positive (or --fps), got {self.latency_ms}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if not self.demo and self.cfg is None:
            raise UsageError("give --cfg (and --weights, --data), or --demo for the embedded demo")


@dataclass
class Artifact:
    """What flows from one stage to the next."""

    folder: Path | None = None  # model.cfg + model.safetensors
    files: dict[str, str] = field(default_factory=dict)  # other outputs by role (onnx, quantized, ...)

    @property
    def cfg(self) -> Path:
        assert self.folder is not None
        return self.folder / MODEL_CFG

    @property
    def weights(self) -> Path:
        assert self.folder is not None
        return self.folder / MODEL_WEIGHTS


@dataclass
class StageRecord:
    name: str
    status: str  # done | cached | skipped | failed
    key: str = ""
    reason: str = ""
    wall_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def stage_key(name: str, params: dict[str, Any], upstream: str, inputs: list[Path]) -> str:
    body = {
        "stage": name,
        "params": params,
        "upstream": upstream,
        "inputs": {p.name: file_sha256(p) for p in inputs if p.is_file()},
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
