"""The power and clock state a benchmark ran under: ``nvpmodel -q`` and ``jetson_clocks --show``.

A Jetson FPS figure means little without them (the same Nano is 2x apart between 5 W and MAXN with
clocks pinned), so benchmarks record both.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgeyolo.targets.parsing import ToolOutputError, require_text


@dataclass(frozen=True)
class PowerMode:
    name: str
    mode_id: int | None
    errors: tuple[str, ...] = ()  # NVPM ERROR lines (nvpmodel run without sudo prints them after the mode)


_MODE = re.compile(r"NV Power Mode: ?(.+?)\s*$")


def parse_nvpmodel(text: str) -> PowerMode:
    """Mode name and id from ``nvpmodel -q``; the 'NVPM ERROR' lines of a non-root run are kept, not fatal."""
    require_text("nvpmodel -q", text)
    lines = [ln.strip() for ln in text.splitlines()]
    errors = tuple(ln for ln in lines if ln.startswith("NVPM ERROR"))
    for i, line in enumerate(lines):
        m = _MODE.search(line)
        if m is None:
            continue
        mode_id = None
        for following in lines[i + 1:]:
            if not following:
                continue
            if following.isdigit():
                mode_id = int(following)
            break
        return PowerMode(m.group(1), mode_id, errors)
    if errors:
        raise ToolOutputError("nvpmodel -q", "no 'NV Power Mode:' line, only NVPM errors (run it with sudo)", errors[0])
    raise ToolOutputError("nvpmodel -q", "no 'NV Power Mode:' line", text)


@dataclass(frozen=True)
class ClockDomain:
    min_hz: int | None
    max_hz: int | None
    current_hz: int | None

    @property
    def pinned(self) -> bool | None:
        """True when running at its maximum (what jetson_clocks sets); None when not reported."""
        if self.max_hz is None or self.current_hz is None:
            return None
        return self.current_hz >= self.max_hz


@dataclass(frozen=True)
class ClockState:
    soc_family: str | None
    machine: str | None
    online_cpus: tuple[int, ...]
    cluster_switching: str | None = None
    cpus: dict[int, ClockDomain] = field(default_factory=dict)
    gpu: ClockDomain | None = None
    emc: ClockDomain | None = None
    power_mode: str | None = None

    @property
    def clocks_pinned(self) -> bool | None:
        """All reported domains at their maximum; None when the output did not include any domain."""
        domains = [*self.cpus.values(), *(d for d in (self.gpu, self.emc) if d is not None)]
        states = [d.pinned for d in domains if d.pinned is not None]
        return all(states) if states else None


def _cpu_list(text: str) -> tuple[int, ...]:
    cpus: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(part)
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(cpus)


def _domain(fields: dict[str, str]) -> ClockDomain:
    def num(key: str) -> int | None:
        value = fields.get(key)
        return int(value) if value is not None and value.isdigit() else None

    return ClockDomain(num("MinFreq"), num("MaxFreq"), num("CurrentFreq"))


_KV = re.compile(r"(\w+)=(\S+)")


def parse_jetson_clocks(text: str) -> ClockState:
    """``jetson_clocks --show``: board, online CPUs and, where printed, per-domain min/max/current clocks."""
    require_text("jetson_clocks --show", text)
    soc = machine = switching = mode = None
    online: tuple[int, ...] = ()
    cpus: dict[int, ClockDomain] = {}
    gpu = emc = None
    seen_header = False
    for raw in text.splitlines():
        line = raw.strip()
        if (m := re.match(r"SOC family:(\S+)\s+Machine:\s*(.+)$", line)) is not None:
            soc, machine, seen_header = m.group(1), m.group(2).strip(), True
        elif line.startswith("Online CPUs:"):
            try:
                online = _cpu_list(line.split(":", 1)[1])
            except ValueError:
                raise ToolOutputError("jetson_clocks --show", "bad 'Online CPUs:' list", line) from None
            seen_header = True
        elif line.startswith("CPU Cluster Switching:"):
            switching = line.split(":", 1)[1].strip()
        elif (m := re.match(r"cpu(\d+):", line)) is not None:
            cpus[int(m.group(1))] = _domain(dict(_KV.findall(line)))
        elif line.startswith("GPU "):
            gpu = _domain(dict(_KV.findall(line)))
        elif line.startswith("EMC "):
            emc = _domain(dict(_KV.findall(line)))
        elif (m := _MODE.search(line)) is not None:
            mode = m.group(1)
    if not seen_header:
        raise ToolOutputError("jetson_clocks --show", "no 'SOC family:… Machine:…' or 'Online CPUs:' line", text)
    return ClockState(soc, machine, online, switching, cpus, gpu, emc, mode)
