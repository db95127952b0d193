"""How the command modules render numbers and tables (rich is imported when a table is made)."""
from __future__ import annotations

import math
from typing import Optional


def table(title: str, columns: tuple[str, ...], left: tuple[str, ...] = ()):
    """A rich table whose columns are right-aligned numbers except the ``left`` (text) ones."""
    from rich.table import Table

    out = Table(title=title)
    for col in columns:
        out.add_column(col, justify="left" if col in left else "right")
    return out


def size_text(n: int) -> str:
    """A byte count as MB from 100 kB up, else kB, one decimal."""
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def number_or_dash(value: Optional[float], spec: str = ".1f") -> str:
    """``value`` formatted with ``spec``; an em dash for a missing or NaN value."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)
