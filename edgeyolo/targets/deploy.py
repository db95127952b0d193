"""Deploying to a board: the agent and the artifacts uploaded (unchanged files skipped, dropped
uploads resumed), with a sidecar carrying each ONNX's contract. What the runner benches and the
Jetson engine build upload goes through here.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgeyolo.errors import ConnectionFailed, InputFileError, UsageError
from edgeyolo.targets.transport import BoardLock, Progress, Transport, Upload

log = logging.getLogger(__name__)

AGENT = "agent.py"
MODELS = "models"
RUNS = "runs"
DATA = "data"
MODEL_SUFFIXES = (".onnx", ".engine", ".plan", ".trt", ".xmodel")
SIDECAR = ".edgeyolo.json"


def agent_source() -> Path:
    return Path(__file__).with_name("agent.py")


# ------------------------------------------------------------------------------------ deploy


@dataclass
class DeployReport:
    uploads: list[Upload] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes_sent(self) -> int:
        return sum(u.sent for u in self.uploads)

    @property
    def unchanged(self) -> int:
        return sum(u.skipped for u in self.uploads)

    def to_dict(self) -> dict[str, Any]:
        return {"bytes_sent": self.bytes_sent, "unchanged": self.unchanged, "seconds": self.seconds,
                "files": [asdict(u) for u in self.uploads]}


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """The edgeyolo metadata of an ONNX file (onnx only; no torch on this path)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError & co.
        raise InputFileError(f"{path}: not a readable ONNX file ({exc})") from None
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("edgeyolo.")}


def deploy_plan(artifacts: Sequence[str | Path], staging: Path) -> list[tuple[Path, str]]:
    """(local file, remote path relative to the workdir) for the agent and every artifact. A folder
    (a bundle) keeps its layout under ``models/<folder>/``; every ONNX file gets a sidecar with its
    contract, which engines and xmodels built from it on the board pick up by stem."""
    plan: list[tuple[Path, str]] = [(agent_source(), AGENT)]
    for item in artifacts:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            if not files:
                raise InputFileError(f"{path}: the folder is empty; nothing to deploy")
            pairs = [(f, f"{MODELS}/{path.name}/{f.relative_to(path).as_posix()}") for f in files]
        elif path.is_file():
            pairs = [(path, f"{MODELS}/{path.name}")]
        else:
            raise InputFileError(f"{path}: no such file or folder to deploy")
        for local, remote in pairs:
            plan.append((local, remote))
            if local.suffix.lower() == ".onnx":
                meta = read_onnx_metadata(local)
                if meta:
                    stem = remote[: -len(local.suffix)]
                    side = staging / f"{len(plan)}{SIDECAR}"
                    side.write_text(json.dumps(meta, sort_keys=True, indent=1))
                    plan.append((side, stem + SIDECAR))
    remotes = [r for _, r in plan]
    if len(set(remotes)) != len(remotes):
        raise UsageError("two artifacts would land on the same name on the board; rename one")
    return plan


def upload(
    transport: Transport, plan: Sequence[tuple[Path, str]], progress: Progress | None = None, retries: int = 2
) -> DeployReport:
    """Upload every file; a dropped connection is reconnected and the file resumed, ``retries`` times."""
    report = DeployReport()
    started = time.monotonic()
    for attempt in range(retries + 1):
        try:
            report.uploads = transport.put_many(plan, progress=progress)  # files already there are skipped
            break
        except ConnectionFailed as exc:
            if attempt == retries:
                raise
            log.warning("%s; reconnecting to resume (%d/%d)", exc, attempt + 1, retries)
            time.sleep(min(2.0 * (attempt + 1), 5.0))
            transport.reconnect()
    report.seconds = time.monotonic() - started
    return report


def deploy(
    transport: Transport, artifacts: Sequence[str | Path], progress: Progress | None = None, retries: int = 2
) -> DeployReport:
    """The agent and the artifacts on the board, under the board lock."""
    with tempfile.TemporaryDirectory() as tmp:
        plan = deploy_plan(artifacts, Path(tmp))
        with BoardLock(transport, "deploy"):
            return upload(transport, plan, progress, retries)
