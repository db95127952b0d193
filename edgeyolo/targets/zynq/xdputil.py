"""``xdputil query`` on a DPU board: the fingerprint an xmodel must be compiled for, and the runtime version.

An xmodel runs only on the DPU fingerprint it was compiled for, and the board image's Vitis AI runtime
must match the compiler's release, so deployment reads both from the board rather than trusting the
board's name.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from edgeyolo.targets.parsing import ToolOutputError, require_text

DPUCZDX8G_TYPE = 0x01


@dataclass(frozen=True)
class Fingerprint:
    """``type << 56 | isa_version << 48 | feature_code`` (Vitis AI target_factory.cpp)."""

    value: int

    @property
    def type(self) -> int:
        return self.value >> 56

    @property
    def isa_version(self) -> int:
        return (self.value >> 48) & 0xFF

    @property
    def feature_code(self) -> int:
        return self.value & 0xFFFFFFFFFFFF

    @property
    def isa(self) -> str:
        return f"ISA{self.isa_version}"

    @property
    def hex(self) -> str:
        return f"0x{self.value:X}"


def parse_fingerprint(text: str | int) -> Fingerprint:
    if isinstance(text, int):
        value = text
    else:
        try:
            value = int(str(text).strip(), 16 if str(text).strip().lower().startswith("0x") else 10)
        except ValueError:
            raise ToolOutputError("xdputil query", "a fingerprint must be a hex number like 0x101000016010407", str(text)) from None
    if not 0 < value < 1 << 64:
        raise ToolOutputError("xdputil query", "a fingerprint is a non-zero 64-bit value", str(text))
    return Fingerprint(value)


@dataclass(frozen=True)
class DpuKernel:
    name: str
    arch: str  # e.g. DPUCZDX8G_ISA1_B1024
    fingerprint: Fingerprint
    freq_mhz: int | None
    cu_index: int | None

    @property
    def size(self) -> str | None:
        m = re.search(r"_(B\d+)", self.arch)
        return m.group(1) if m else None


@dataclass(frozen=True)
class DpuQuery:
    core_count: int | None
    ip_version: str | None
    vai_version: str | None  # e.g. 2.5.0, from target-factory / vart-runner
    kernels: tuple[DpuKernel, ...]
    versions: dict[str, str]

    @property
    def fingerprint(self) -> Fingerprint:
        return self.kernels[0].fingerprint


def parse_xdputil_query(text: str) -> DpuQuery:
    """The JSON ``xdputil query`` prints (anything before the first '{', e.g. the command, is skipped)."""
    require_text("xdputil query", text)
    start = text.find("{")
    if start < 0:
        raise ToolOutputError("xdputil query", "no JSON object in the output", text)
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        raise ToolOutputError("xdputil query", f"the JSON does not parse ({exc.msg} at char {exc.pos})", text[start:]) from None
    if not isinstance(data, dict) or not isinstance(data.get("kernels"), list) or not data["kernels"]:
        raise ToolOutputError("xdputil query", "no 'kernels' list with at least one DPU core", text[start:])
    kernels = []
    for k in data["kernels"]:
        if not isinstance(k, dict) or "fingerprint" not in k:
            raise ToolOutputError("xdputil query", "a kernel entry has no 'fingerprint'", json.dumps(k))
        freq = k.get("DPU Frequency (MHz)")
        kernels.append(
            DpuKernel(
                str(k.get("name", "")),
                str(k.get("DPU Arch", "")),
                parse_fingerprint(str(k["fingerprint"])),
                int(freq) if isinstance(freq, (int, float)) else None,
                k.get("cu_idx") if isinstance(k.get("cu_idx"), int) else None,
            )
        )
    spec = data.get("DPU IP Spec", {}) if isinstance(data.get("DPU IP Spec"), dict) else {}
    versions = {str(k): str(v).strip() for k, v in (data.get("VAI Version") or {}).items()}
    vai = None
    for value in versions.values():
        m = re.search(r"(?:Version: |target-factory\.)(\d+\.\d+(?:\.\d+)?)", value)
        if m:
            vai = m.group(1)
            break
    count = spec.get("DPU Core Count")
    return DpuQuery(
        int(count) if isinstance(count, int) else None,
        spec.get("IP version"),
        vai,
        tuple(kernels),
        versions,
    )
