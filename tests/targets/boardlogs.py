"""Real board/tool output from ``../shared/reference/board-logs`` (or $EDGEYOLO_SHARED), header removed."""
from __future__ import annotations

from tests.conftest import shared_path

HEADER_END = "# verbatim; trimmed to the relevant block"


def board_log(name: str) -> str:
    """The payload of a fixture: everything after its header's last line (skips the test if absent)."""
    text = shared_path("reference", "board-logs", name).read_text()
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(HEADER_END):
            return "".join(lines[i + 1:])
    raise AssertionError(f"{name}: no '{HEADER_END}' line ending the header")
