"""``vai_c_xir``: the compile command for a DPU board image, and what its log says came out.

The number of DPU subgraphs is the figure to watch: every operator the DPU cannot run splits the
graph and sends a piece to the CPU (Vitis-AI#449: 75-115 subgraphs from an unfused LeakyReLU).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from edgeyolo.errors import TargetError
from edgeyolo.targets.parsing import ToolOutputError, require_text
from edgeyolo.targets.profiles import DpuImage


def vai_c_xir_command(xmodel: str, image: DpuImage, out_dir: str, name: str, arch_json: str | None = None) -> list[str]:
    """The compile line; without an arch.json path the image's fingerprint is passed inline."""
    arch = arch_json or json.dumps({"fingerprint": image.fingerprint_hex})
    return ["vai_c_xir", "-x", xmodel, "-a", arch, "-o", out_dir, "-n", name]


@dataclass(frozen=True)
class CompiledGraph:
    name: str | None  # None when the log excerpt starts after the graph's name
    ops: int | None
    device_subgraphs: int | None
    dpu_subgraphs: int | None
    done: bool


@dataclass(frozen=True)
class VaiCompileResult:
    target: str | None
    graphs: tuple[CompiledGraph, ...]
    errors: tuple[str, ...]
    meta_json: str | None = None
    log_path: str | None = None

    @property
    def status(self) -> str:
        """'failed' (an ERROR/FATAL line), 'ok' (every graph compiled) or 'incomplete' (log cut short)."""
        if self.errors:
            return "failed"
        return "ok" if self.graphs and all(g.done for g in self.graphs) else "incomplete"

    @property
    def last(self) -> CompiledGraph:
        done = [g for g in self.graphs if g.dpu_subgraphs is not None]
        return done[-1] if done else self.graphs[-1]

    def raise_for_status(self) -> VaiCompileResult:
        if self.status == "failed":
            raise VaiCompileFailed(self)
        return self


class VaiCompileFailed(TargetError):
    def __init__(self, result: VaiCompileResult):
        self.result = result
        super().__init__(f"vai_c_xir failed for target {result.target or '?'}: {result.errors[0]}")


_UNILOG = re.compile(r"\[UNILOG\]\[(\w+)\]\s*(.*)$")


def parse_vai_c_xir(text: str) -> VaiCompileResult:
    """Target, per-graph op and subgraph counts, and errors from a vai_c_xir / xcompiler log (plain or glog)."""
    require_text("vai_c_xir", text)
    target = meta = log_path = None
    errors: list[str] = []
    graphs: list[dict] = []

    def current() -> dict:
        if not graphs:
            graphs.append({"name": None, "ops": None, "device": None, "dpu": None, "done": False})
        return graphs[-1]

    seen = False
    for line in text.splitlines():
        m = _UNILOG.search(line)
        if m is None:
            continue
        seen = True
        level, msg = m.group(1), m.group(2).strip()
        if level in ("ERROR", "FATAL"):
            errors.append(msg)
        if msg.startswith("Compile mode:"):
            graphs.append({"name": None, "ops": None, "device": None, "dpu": None, "done": False})
        elif msg.startswith("Target architecture:"):
            target = msg.split(":", 1)[1].strip()
        elif (g := re.match(r"Graph name: (.*), with op num: (\d+)", msg)) is not None:
            current().update(name=g.group(1), ops=int(g.group(2)))
        elif (s := re.match(r"Total device subgraph number (\d+), DPU subgraph number (\d+)", msg)) is not None:
            current().update(device=int(s.group(1)), dpu=int(s.group(2)))
        elif msg.startswith("Compile done"):
            current()["done"] = True
        elif (p := re.match(r'The meta json is saved to "(.*)"', msg)) is not None:
            meta = p.group(1)
        elif (p := re.match(r'The compiler log will be dumped at "(.*)"', msg)) is not None:
            log_path = p.group(1)
    if not seen:
        raise ToolOutputError("vai_c_xir", "no [UNILOG] line", text)
    return VaiCompileResult(
        target,
        tuple(CompiledGraph(g["name"], g["ops"], g["device"], g["dpu"], g["done"]) for g in graphs),
        tuple(errors),
        meta,
        log_path,
    )
