"""Board families are registered classes: a new family and a profile of it are one class and two
registrations, seen by ``targets list`` and ``targets show`` with no other edit. The board side
(``edgeyolo.targets``) imports without torch and without the model side."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeyolo.cli.app import main
from edgeyolo.targets.families import FAMILIES, BoardFamily, Family, get_family
from edgeyolo.targets.profiles import TARGETS, OperatorRules, Precision, TargetProfile, get_target, register_profile


class DummyFamily(BoardFamily):
    """A board family known only to this test."""

    native_suffixes = (".dummy",)
    default_user = "pi"


def dummy_profile(family: str = "dummy") -> TargetProfile:
    return TargetProfile(
        name="dummy-board", title="Dummy board (a test's own family)", family=family, runtime="onnxruntime",
        precisions=(Precision.FP32,), default_precision=Precision.FP32, channel_multiples={Precision.FP32: 4},
        input_sizes=(320,), input_multiple=32, rules=OperatorRules(activations=frozenset({"leaky", "relu"})),
        artifact="the exported ONNX",
    )


def test_a_family_registered_from_outside_is_listed_and_shown(capsys):
    FAMILIES.add("dummy", DummyFamily)
    try:
        register_profile(dummy_profile())
        try:
            profile = get_target("dummy-board")
            assert profile.family == "dummy" and isinstance(profile.family_obj, DummyFamily)
            assert profile.family_obj.pick_model(["models/a.onnx", "models/a.dummy"]) == "models/a.dummy"
            assert main(["targets", "list"]) == 0
            out = capsys.readouterr().out
            assert "dummy-board" in out and "Dummy board (a test's own family)" in out and "jetson-nano" in out
            assert main(["targets", "list", "--json"]) == 0
            listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)["targets"]}
            assert listed["dummy-board"]["family"] == "dummy" and listed["zcu104"]["family"] == "zynq"
            assert main(["targets", "show", "dummy-board"]) == 0
            out = capsys.readouterr().out
            assert out.startswith("dummy-board: Dummy board") and "multiple of 4" in out
        finally:
            TARGETS.remove("dummy-board")
    finally:
        FAMILIES.remove("dummy")
    assert main(["targets", "list"]) == 0
    assert "dummy-board" not in capsys.readouterr().out
    assert "dummy" not in FAMILIES


def test_a_profile_of_an_unregistered_family_is_refused():
    with pytest.raises(ValueError, match="unknown board family 'dummy'; known: host, jetson, zynq"):
        dummy_profile()


def test_the_builtin_families_by_name():
    nano = get_target("jetson-nano")
    assert nano.family == Family.JETSON == "jetson" and type(nano.family_obj) is type(get_family("jetson"))
    assert get_target("zcu104").family == Family.ZYNQ and get_target("host").family == Family.HOST
    assert type(nano.family_obj).__name__ == "JetsonFamily" and nano.family_obj.builds_engine_on_board


def test_doctor_tables_per_family():
    """doctor's rows per family, as the per-kind tables of the runner listed them."""
    from edgeyolo.targets.runner import _doctor_rows

    base = {"ssh", "python", "numpy", "opencv", "disk"}
    jetson = {"tensorrt", "pycuda / cuda-python", "trtexec", "L4T / JetPack", "nvpmodel", "jetson_clocks", "DLA vs profile", "swap"}
    zynq = {"vart", "xir", "xdputil", "DPU vs profile"}
    assert _doctor_rows("generic") == (base, set())
    assert _doctor_rows("host") == (base | {"onnxruntime"}, jetson | zynq)
    assert _doctor_rows("jetson-nano") == (base | {"tensorrt", "pycuda / cuda-python", "trtexec", "L4T / JetPack"}, zynq)
    assert _doctor_rows("ultra96") == (base | {"vart", "xir", "xdputil"}, jetson)


def test_the_board_side_imports_without_torch_or_the_model_side():
    """Every module under edgeyolo.targets imports with torch unavailable, and none of them pulls
    in the model, data, train, compress, export, runtime or bench code."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        sys.modules["torch"] = None  # any 'import torch' raises ImportError
        import edgeyolo.targets
        names = ["edgeyolo.targets"] + [m.name for m in pkgutil.walk_packages(edgeyolo.targets.__path__, "edgeyolo.targets.")]
        for name in names:
            importlib.import_module(name)
        framework = ("model", "train", "compress", "runtime", "export", "data", "bench", "adapt", "pipeline", "cli")
        loaded = sorted(m for m in sys.modules if m.split(".")[:2] in [["edgeyolo", f] for f in framework])
        assert not loaded, loaded
        print(len(names))
        """
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert int(result.stdout.strip()) >= 20  # profiles, families, transport, runner, jetson/*, zynq/*, ...


def _board_side_imports() -> dict[str, set[str]]:
    """Every edgeyolo.targets module a module of edgeyolo.targets imports, anywhere in its source."""
    import ast

    package = Path(__file__).resolve().parents[2] / "edgeyolo" / "targets"
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name and m != "edgeyolo.targets"}
    return graph


def test_no_import_cycle_on_the_board_side():
    """The runner and the Jetson engine build share the deploy module instead of importing each other;
    counting the imports inside functions, no module of edgeyolo.targets reaches itself."""
    graph = _board_side_imports()
    assert "edgeyolo.targets.runner" not in graph["edgeyolo.targets.jetson.engine"]
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
