"""Shared pieces of the board-tool output parsers (trtexec, tegrastats, nvpmodel, xdputil, vai_c_xir).

The parsers read text captured on a board and return frozen dataclasses; they run on the host, need
neither torch nor the vendor tools, and raise ``ToolOutputError`` when the text is not what the tool
prints, naming the tool, what was missing and a snippet of what was read instead.
"""
from __future__ import annotations

from edgeyolo.errors import TargetError


class ToolOutputError(TargetError):
    """Text that should be a tool's output but is not (empty, truncated, another command's output)."""

    def __init__(self, tool: str, problem: str, text: str = ""):
        self.tool = tool
        self.problem = problem
        snippet = " ".join(text.strip().split())[:80]
        seen = f"; got: {snippet!r}" if snippet else "; got empty text"
        super().__init__(f"cannot read {tool} output: {problem}{seen}")


def require_text(tool: str, text: str) -> str:
    if not isinstance(text, str):
        raise ToolOutputError(tool, f"expected text, got {type(text).__name__}")
    if not text.strip():
        raise ToolOutputError(tool, "the output is empty")
    return text
