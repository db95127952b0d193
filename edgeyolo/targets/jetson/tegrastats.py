"""tegrastats lines: memory, CPU and GPU load, temperatures and power rails of a Jetson.

The format varies by module and JetPack: a leading timestamp (JetPack 5+), rails with or without
``mW``, ``GR3D_FREQ 0%`` with a frequency, without one or with a per-GPC list, CPU cores that are
``off``, absent sensors at ``-256C`` and a dummy ``PMIC@100C``. One tolerant tokenizer reads them all.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from statistics import mean

from edgeyolo.targets.parsing import ToolOutputError, require_text

# rails that measure the whole module's input; when present the total power is theirs alone
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
ABSENT_SENSOR_C = -256.0
DUMMY_SENSORS = ("PMIC",)  # PMIC@100C is a fixed placeholder on Nano/TX2/Xavier


@dataclass(frozen=True)
class CpuCore:
    load_pct: float | None  # None when the core is off
    freq_mhz: int | None

    @property
    def online(self) -> bool:
        return self.load_pct is not None


@dataclass(frozen=True)
class Rail:
    name: str
    current_mw: float
    average_mw: float


@dataclass(frozen=True)
class TegrastatsSample:
    ram_used_mb: int
    ram_total_mb: int
    cpus: tuple[CpuCore, ...]
    gpu_load_pct: float | None
    gpu_freq_mhz: int | None
    emc_load_pct: float | None = None
    emc_freq_mhz: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    temps_c: dict[str, float] = field(default_factory=dict)
    rails: tuple[Rail, ...] = ()
    timestamp: str | None = None

    @property
    def cpu_load_pct(self) -> float | None:
        """Mean load over the online cores."""
        loads = [c.load_pct for c in self.cpus if c.load_pct is not None]
        return mean(loads) if loads else None

    @property
    def cpus_online(self) -> int:
        return sum(c.online for c in self.cpus)

    @property
    def total_power_mw(self) -> float | None:
        """Module input power: the input rail when one is reported, else the sum of all rails."""
        for name in INPUT_RAILS:
            for rail in self.rails:
                if rail.name == name:
                    return rail.current_mw
        return sum(r.current_mw for r in self.rails) if self.rails else None

    @property
    def power_source(self) -> str | None:
        names = {r.name for r in self.rails}
        for name in INPUT_RAILS:
            if name in names:
                return name
        return "sum of rails" if self.rails else None


@dataclass(frozen=True)
class TegrastatsSummary:
    samples: int
    gpu_load_pct: float | None
    cpu_load_pct: float | None
    power_mw: float | None
    max_temp_c: float | None
    ram_used_mb: int


_TIMESTAMP = re.compile(r"(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d) ")
_RAM = re.compile(r"RAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"SWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"CPU \[([^\]]*)\]")
_CORE = re.compile(r"(\d+(?:\.\d+)?)%(?:@(\d+))?")
_FREQ = re.compile(r"(EMC_FREQ|GR3D_FREQ) (\d+(?:\.\d+)?)%(?:@(\d+|\[[\d,]*\]))?")
_TEMP = re.compile(r"(?<![\w@])([A-Za-z_]\w*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


def parse_tegrastats_line(line: str) -> TegrastatsSample:
    require_text("tegrastats", line)
    ram = _RAM.search(line)
    if ram is None:
        raise ToolOutputError("tegrastats", "no 'RAM used/totalMB' field", line)
    ts = _TIMESTAMP.search(line[: ram.start()])
    cpu = _CPU.search(line)
    if cpu is None:
        raise ToolOutputError("tegrastats", "no 'CPU [..]' field", line)
    cores = []
    for item in cpu.group(1).split(","):
        item = item.strip()
        if item == "off":
            cores.append(CpuCore(None, None))
            continue
        m = _CORE.fullmatch(item)
        if m is None:
            raise ToolOutputError("tegrastats", f"bad CPU entry '{item}' (expected pct%@MHz or off)", line)
        cores.append(CpuCore(float(m.group(1)), int(m.group(2)) if m.group(2) else None))
    freqs: dict[str, tuple[float, int | None]] = {}
    for name, pct, mhz in _FREQ.findall(line):
        freqs[name] = (float(pct), int(mhz) if mhz.isdigit() else None)
    temps = {
        name: float(value)
        for name, value in _TEMP.findall(line)
        if float(value) != ABSENT_SENSOR_C and name not in DUMMY_SENSORS
    }
    tail = line[cpu.end():]
    rails = tuple(Rail(n, float(cur), float(avg)) for n, cur, avg in _RAIL.findall(tail))
    swap = _SWAP.search(line)
    gpu = freqs.get("GR3D_FREQ")
    emc = freqs.get("EMC_FREQ")
    return TegrastatsSample(
        ram_used_mb=int(ram.group(1)),
        ram_total_mb=int(ram.group(2)),
        cpus=tuple(cores),
        gpu_load_pct=gpu[0] if gpu else None,
        gpu_freq_mhz=gpu[1] if gpu else None,
        emc_load_pct=emc[0] if emc else None,
        emc_freq_mhz=emc[1] if emc else None,
        swap_used_mb=int(swap.group(1)) if swap else None,
        swap_total_mb=int(swap.group(2)) if swap else None,
        temps_c=temps,
        rails=rails,
        timestamp=ts.group(1) if ts else None,
    )


def parse_tegrastats(text: str) -> list[TegrastatsSample]:
    """Every tegrastats line in ``text``; other lines (a shell prompt, the command) are skipped."""
    require_text("tegrastats", text)
    samples = [parse_tegrastats_line(line) for line in text.splitlines() if _RAM.search(line)]
    if not samples:
        raise ToolOutputError("tegrastats", "no line with a 'RAM used/totalMB' field", text)
    return samples


def summarize(samples: list[TegrastatsSample]) -> TegrastatsSummary:
    if not samples:
        raise ToolOutputError("tegrastats", "no samples to summarize")

    def avg(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return mean(present) if present else None

    temps = [t for s in samples for t in s.temps_c.values()]
    return TegrastatsSummary(
        samples=len(samples),
        gpu_load_pct=avg([s.gpu_load_pct for s in samples]),
        cpu_load_pct=avg([s.cpu_load_pct for s in samples]),
        power_mw=avg([s.total_power_mw for s in samples]),
        max_temp_c=max(temps) if temps else None,
        ram_used_mb=max(s.ram_used_mb for s in samples),
    )
