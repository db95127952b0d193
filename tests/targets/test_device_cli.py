"""`edgeyolo doctor` as a gate, `edgeyolo device clean`, the remote failure said once, and board tools
outside a non-login PATH, against the loopback board."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from edgeyolo.cli.app import main
from edgeyolo.errors import RemoteCommandError
from tests.targets.conftest import write_inventory

JETSON_ROWS = ("tensorrt", "pycuda / cuda-python", "trtexec", "L4T / JetPack", "nvpmodel", "jetson_clocks", "swap")
ZYNQ_ROWS = ("vart", "xir", "xdputil")


def _rows(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in ("ok", "missing", "warn"):
            rows[parts[1].split("  ")[0].strip()] = parts[0]
    return rows


def test_doctor_fails_when_the_board_python_is_missing(device, tmp_path, capsys):
    """f6b95b9: exit 0 with 'python missing' in the table (fails on ``== 1``)."""
    args = write_inventory(device, tmp_path / "devices.yaml", python="/nonexistent/python3")
    assert main(["doctor", *args]) == 1
    captured = capsys.readouterr()
    assert "lacks what it needs: python" in captured.err


def test_doctor_fails_when_numpy_cannot_be_imported(device, tmp_path, capsys):
    """A board python whose numpy is broken. f6b95b9: exit 0 (fails on ``== 1``)."""
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "numpy.py").write_text("raise ImportError('numpy is broken on this board')\n")
    wrapper = tmp_path / "python3"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    args = write_inventory(device, tmp_path / "devices.yaml", python=str(wrapper), target="host")
    assert main(["doctor", *args]) == 1
    captured = capsys.readouterr()
    assert _rows(captured.out)["numpy"] == "missing"
    assert "lacks what it needs: numpy" in captured.err


def test_doctor_on_a_host_target_lists_no_board_rows(device, tmp_path, capsys):
    """f6b95b9: every Jetson and Zynq row is listed as missing (fails on the first ``not in``)."""
    args = write_inventory(device, tmp_path / "devices.yaml", target="host")
    assert main(["doctor", *args]) == 0
    rows = _rows(capsys.readouterr().out)
    for name in JETSON_ROWS + ZYNQ_ROWS:
        assert name not in rows, name
    assert rows["python"] == rows["numpy"] == rows["onnxruntime"] == "ok"


def test_doctor_on_a_jetson_target_needs_tensorrt(device, tmp_path, capsys):
    args = write_inventory(device, tmp_path / "devices.yaml", target="jetson-nano")
    assert main(["doctor", *args]) == 1
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    assert rows["tensorrt"] == "missing" and "vart" not in rows
    assert "tensorrt" in captured.err and "trtexec" in captured.err


# ---------------------------------------------------------------- partial uploads


def _stale_parts(device) -> list[Path]:
    models = Path(device.workdir) / "models"
    models.mkdir(parents=True, exist_ok=True)
    parts = []
    for name, digest in (("old.onnx", "0123456789abcdef"), ("m.bin", "fedcba9876543210")):
        p = models / f".{name}.{digest}.part"
        with open(p, "wb") as fh:
            fh.truncate(50 << 20)  # what an abandoned upload of a model leaves
        parts.append(p)
    return parts


def test_device_clean_removes_abandoned_partial_uploads(device, tmp_path, capsys):
    """f6b95b9: there is no `device clean` (fails on ``== 0``)."""
    parts = _stale_parts(device)
    keep = Path(device.workdir) / "models" / "model.onnx"
    keep.write_bytes(b"deployed")
    args = write_inventory(device, tmp_path / "devices.yaml")
    assert main(["device", "clean", *args]) == 0
    out = capsys.readouterr().out
    assert "2 partial uploads removed, 104.9 MB freed" in out
    assert not any(p.exists() for p in parts) and keep.read_bytes() == b"deployed"


def test_deploy_removes_stale_partials_of_the_files_it_uploads(device, tmp_path, transport):
    """A partial of another version of m.bin can never be resumed. f6b95b9: it stays (fails on the
    ``not exists``)."""
    stale, other = _stale_parts(device)[1], _stale_parts(device)[0]
    src = tmp_path / "m.bin"
    src.write_bytes(b"new version")
    transport.put(src, "models/m.bin")
    assert not stale.exists()
    assert other.exists()  # a partial of a file not being uploaded is left to `device clean`


# ---------------------------------------------------------------- one clear line


def test_a_remote_failure_is_not_printed_twice(transport, device):
    """The board's stderr is streamed as it comes; the error repeats its last line only.
    f6b95b9: the error carries the whole traceback again (fails on ``"Traceback" not in``)."""
    lines: list[str] = []
    with pytest.raises(RemoteCommandError) as exc:
        transport.run([device.python, "-c", "def f():\n    raise ValueError('bad model')\nf()"], on_stderr=lines.append)
    assert lines[0].startswith("Traceback") and lines[-1] == "ValueError: bad model"
    message = str(exc.value)
    assert "Traceback" not in message and "\n" not in message and "ValueError: bad model" in message


# ---------------------------------------------------------------- tools outside PATH


def test_board_tools_are_found_outside_a_non_login_path(tmp_path, monkeypatch):
    """nvpmodel lives in /usr/sbin, which a non-login SSH session's PATH lacks.
    f6b95b9: the agent only asks PATH (fails on ``nvpmodel is not None``)."""
    from edgeyolo.targets import agent

    sbin = tmp_path / "sbin"
    sbin.mkdir()
    tool = sbin / "nvpmodel"
    tool.write_text("#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin-without-tools"))
    monkeypatch.setattr(agent, "TOOL_DIRS", (str(sbin),), raising=False)
    state = agent.board_state(str(tmp_path), modules=False)
    assert state["nvpmodel"] is not None and state["nvpmodel"]["code"] == 0
    assert "MAXN" in state["nvpmodel"]["out"] and state["nvpmodel"]["cmd"].startswith(str(tool))
    assert os.environ["PATH"] == str(tmp_path / "bin-without-tools")
