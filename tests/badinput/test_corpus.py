"""The bad-input corpus: every case in ``cases/`` is one command a user ran on a bad input, and must
end in one ``error:`` line, a non-zero exit and nothing left behind (see README.md beside this file).

The commands run in-process through ``edgeyolo.cli.app.main``. The CLI's logging handler is not
installed in-process (pytest owns the root logger), so warnings logged by the library are counted as
stderr lines from the captured log records: a case passes only if the user would have seen one line.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
CASES = sorted((HERE / "cases").glob("*.yaml"))
SMALL_CFG = (HERE / "small.cfg").read_text(encoding="utf-8").splitlines()
KEYS = {"about", "files", "argv", "exit", "error", "output"}


def load_case(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(case, dict), f"{path.name}: a case is a mapping"
    unknown = set(case) - KEYS
    assert not unknown, f"{path.name}: unknown keys {sorted(unknown)} (known: {sorted(KEYS)})"
    for key in ("about", "argv", "error"):
        assert key in case, f"{path.name}: '{key}' is required"
    return case


def _sub(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, list):
        return [_sub(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: _sub(v, tmp) for k, v in value.items()}
    return value


def small_cfg(changes: dict[int, str] | None) -> str:
    lines = list(SMALL_CFG)
    for number, text in (changes or {}).items():
        lines[int(number) - 1] = text
    return "\n".join(lines) + "\n"


def darknet_weights(cfg: Path, seed: int = 0, header: list[int] | None = None) -> bytes:
    import numpy as np
    import torch

    from edgeyolo.model.cfg import parse_cfg
    from edgeyolo.model.darknet import Darknet
    from edgeyolo.model.weights import darknet_weights_bytes

    torch.manual_seed(seed)
    data = darknet_weights_bytes(Darknet(parse_cfg(cfg)))
    if header is not None:
        data = np.array(header, dtype="<i4").tobytes() + data[12:]
    return data


def image_bytes(suffix: str, width: int, height: int) -> bytes:
    import cv2
    import numpy as np

    rng = np.random.default_rng(width * 1000 + height)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(suffix, image)
    assert ok, suffix
    return data.tobytes()


def make_files(files: dict[str, dict[str, Any]], tmp: Path) -> None:
    for name, spec in (files or {}).items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (kind,) = set(spec) - {"header", "seed"}
        if kind == "dir":
            path.mkdir()
        elif kind == "text":
            path.write_text(_sub(spec["text"], tmp), encoding="utf-8")
        elif kind == "hex":
            path.write_bytes(bytes.fromhex(spec["hex"]))
        elif kind == "json":
            path.write_text(json.dumps(_sub(spec["json"], tmp)), encoding="utf-8")
        elif kind == "cfg":
            path.write_text(small_cfg(spec["cfg"]), encoding="utf-8")
        elif kind == "weights":
            path.write_bytes(darknet_weights(tmp / spec["weights"], spec.get("seed", 0), spec.get("header")))
        elif kind == "image":
            path.write_bytes(image_bytes(path.suffix, *spec["image"]))
        else:
            raise AssertionError(f"unknown file kind '{kind}' for {name}")


def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` with (is folder, size, mtime_ns): what the command must not change."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (path.is_dir(), 0 if path.is_dir() else st.st_size, 0 if path.is_dir() else st.st_mtime_ns)
    return out


def run_cli(argv: list[str], capsys, caplog) -> tuple[int, list[str]]:
    """Exit code and the lines the user would see on stderr."""
    from edgeyolo.cli.app import main

    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code = main(argv)
    err = capsys.readouterr().err
    logged = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    return code, [line for line in err.splitlines() if line.strip()] + logged


def test_corpus_is_not_empty() -> None:
    assert len(CASES) >= 40, [c.name for c in CASES]  # the corpus only grows


@pytest.mark.parametrize("path", CASES, ids=[c.stem for c in CASES])
def test_case(path: Path, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    case = load_case(path)
    work = tmp_path / "case"
    work.mkdir()
    monkeypatch.chdir(work)  # default outputs (detect's ./output) land here too
    make_files(case.get("files") or {}, work)
    before = snapshot(work)
    code, lines = run_cli([str(a) for a in _sub(case["argv"], work)], capsys, caplog)

    assert code != 0, f"{path.name}: exit 0; stderr: {lines}"
    if "exit" in case:
        assert code == case["exit"], f"{path.name}: exit {code}, expected {case['exit']}; stderr: {lines}"
    assert not any("Traceback" in line for line in lines), lines
    assert len(lines) == 1, f"{path.name}: expected one stderr line, got {len(lines)}: {lines}"
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(case["error"], lines[0]), f"{path.name}: /{case['error']}/ not in: {lines[0]}"
    if "output" in case:
        out = work / _sub(case["output"], work)
        assert str(out.relative_to(work)) in before or not out.exists(), f"{path.name}: {out} was written"
    after = snapshot(work)
    assert after == before, (
        f"{path.name}: the command left something behind or changed an input: "
        f"new {sorted(set(after) - set(before))}, gone {sorted(set(before) - set(after))}, "
        f"changed {sorted(k for k in set(after) & set(before) if after[k] != before[k])}"
    )
