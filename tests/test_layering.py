"""Package layering: no module imports an edgeyolo module from a higher layer.

Layers, lowest first (a module may import its own layer and those below it):

    0  edgeyolo (the top __init__), edgeyolo.errors, .registry, .log, .contract
    1  edgeyolo.model, edgeyolo.data
    2  edgeyolo.train, edgeyolo.compress
    3  edgeyolo.export, edgeyolo.runtime
    4  edgeyolo.targets
    5  edgeyolo.bench
    6  edgeyolo.pipeline
    7  edgeyolo.cli

Extra rules: ``edgeyolo.targets.jetson`` and ``edgeyolo.targets.zynq`` never import each other, and
``edgeyolo/__init__.py`` imports nothing from edgeyolo. The board-side modules import without torch.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "edgeyolo"

LAYERS: dict[str, int] = {
    "edgeyolo": 0,
    "edgeyolo.errors": 0,
    "edgeyolo.registry": 0,
    "edgeyolo.log": 0,
    "edgeyolo.contract": 0,
    "edgeyolo.heap": 0,
    "edgeyolo.model": 1,
    "edgeyolo.data": 1,
    "edgeyolo.train": 2,
    "edgeyolo.compress": 2,
    "edgeyolo.export": 3,
    "edgeyolo.runtime": 3,
    "edgeyolo.targets": 4,
    "edgeyolo.bench": 5,
    "edgeyolo.pipeline": 6,
    "edgeyolo.cli": 7,
}

# pairs of subtrees that must never import one another (in either direction)
SIBLINGS_APART = (("edgeyolo.targets.jetson", "edgeyolo.targets.zynq"),)

_IMPORT_FUNCS = {"import_module", "__import__"}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int | None:
    """Layer of an edgeyolo module by its longest listed prefix; None if it is not under any."""
    best: tuple[int, int] | None = None
    for prefix, level in LAYERS.items():
        if prefix == "edgeyolo":
            continue  # the bare top package is handled below, so 'edgeyolo.foo' is not silently level 0
        if _within(module, prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), level)
    if best is not None:
        return best[1]
    return 0 if module == "edgeyolo" else None


def module_name(path: Path, root: Path = PACKAGE_DIR) -> tuple[str, bool]:
    """('edgeyolo.model.cfg', is_package) for a file under the package directory."""
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every absolute module name the source imports, as (line, name), anywhere in the file.

    ``from X import y`` yields both ``X`` and ``X.y`` (``y`` may be a submodule; names that are not
    modules share X's layer prefix anyway). Relative imports resolve against the module's package.
    Calls ``importlib.import_module('...')`` / ``__import__('...')`` with a literal name count too.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level - 1 > len(base_parts) - 1:
                    raise AssertionError(f"{module}:{node.lineno}: relative import beyond the top package")
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            arg = node.args[0]
            if name in _IMPORT_FUNCS and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
    return found


def check_source(source: str, module: str, is_package: bool = False) -> list[str]:
    """Layering violations of one module's source, one message per offending line and rule."""
    problems: dict[tuple[int, str], str] = {}
    own = layer_of(module)
    if own is None:
        return [f"{module}: not assigned to any layer; add its top package to LAYERS in {Path(__file__).name}"]
    for line, target in imported_modules(source, module, is_package):
        if not _within(target, "edgeyolo"):
            continue
        if module == "edgeyolo":
            problems.setdefault((line, "top"), f"edgeyolo/__init__.py:{line}: the top package imports {target}")
            continue
        level = layer_of(target)
        if level is not None and level > own:
            problems.setdefault((line, "up"), f"{module}:{line}: layer {own} imports {target} of higher layer {level}")
        for a, b in SIBLINGS_APART:
            for mine, theirs in ((a, b), (b, a)):
                if _within(module, mine) and _within(target, theirs):
                    problems.setdefault((line, theirs), f"{module}:{line}: {mine} must never import {theirs}")
    return list(problems.values())


def package_modules() -> list[tuple[Path, str, bool]]:
    return [(path, *module_name(path)) for path in sorted(PACKAGE_DIR.rglob("*.py"))]


# ---------------------------------------------------------------- the checker itself


def test_checker_reports_an_upward_import() -> None:
    source = "import numpy\nfrom edgeyolo.errors import UsageError\nfrom edgeyolo.cli.app import app\n"
    problems = check_source(source, "edgeyolo.model.x")
    assert len(problems) == 1
    assert "edgeyolo.model.x:3" in problems[0] and "edgeyolo.cli.app" in problems[0]


@pytest.mark.parametrize(
    ("source", "module", "is_package"),
    [
        ("def f():\n    import edgeyolo.export.onnx\n", "edgeyolo.model.io", False),  # inside a function
        ("from edgeyolo import cli\n", "edgeyolo.contract", False),  # submodule named after 'import'
        ("from ..export import onnx\n", "edgeyolo.model.cfg", False),  # relative, from a module
        ("from ...bench import run\n", "edgeyolo.targets.jetson", True),  # relative, from a package __init__
        ("from .. import bench\n", "edgeyolo.runtime", True),  # '.' in a package __init__ is the package
        ("import importlib\nimportlib.import_module('edgeyolo.pipeline')\n", "edgeyolo.bench", False),
        ("from edgeyolo.targets.zynq import runner\n", "edgeyolo.targets.jetson.agent", False),
        ("from .. import jetson\n", "edgeyolo.targets.zynq.board", False),
        ("from edgeyolo.errors import UsageError\n", "edgeyolo", True),  # top package imports nothing
        ("import numpy\n", "edgeyolo.newthing", False),  # unassigned module
    ],
)
def test_checker_catches(source: str, module: str, is_package: bool) -> None:
    assert check_source(source, module, is_package), f"no violation reported for {module}: {source!r}"


@pytest.mark.parametrize(
    ("source", "module", "is_package"),
    [
        ("from edgeyolo import __version__\nfrom edgeyolo.errors import UsageError\n", "edgeyolo.cli.app", False),
        ("from edgeyolo.runtime.onnxruntime import make_session\n", "edgeyolo.export.onnx", False),  # same layer
        ("from .cfg import parse_cfg\nfrom . import io\n", "edgeyolo.model.weights", False),
        ("from edgeyolo.targets import common\n", "edgeyolo.targets.zynq", True),
        ("import torch\nimport edgeyolo_extra.cli\n", "edgeyolo.model.x", False),  # not edgeyolo.*
    ],
)
def test_checker_allows(source: str, module: str, is_package: bool) -> None:
    assert check_source(source, module, is_package) == []


def test_relative_imports_resolve_against_the_package() -> None:
    assert [t for _, t in imported_modules("from . import a\n", "edgeyolo.model.cfg", False)] == [
        "edgeyolo.model",
        "edgeyolo.model.a",
    ]
    assert [t for _, t in imported_modules("from .a import b\n", "edgeyolo.model", True)] == [
        "edgeyolo.model.a",
        "edgeyolo.model.a.b",
    ]
    assert imported_modules("from ..x import y\n", "edgeyolo.a.b", False)[0][1] == "edgeyolo.x"
    with pytest.raises(AssertionError, match="beyond the top package"):
        imported_modules("from ...x import y\n", "edgeyolo.a.b", False)


# ---------------------------------------------------------------- the real package


def test_every_module_respects_the_layers() -> None:
    modules = package_modules()
    assert len(modules) > 10, f"found only {len(modules)} modules under {PACKAGE_DIR}"
    problems = [
        p for path, name, is_package in modules for p in check_source(path.read_text(), name, is_package)
    ]
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_top_package_imports_nothing_from_edgeyolo() -> None:
    source = (PACKAGE_DIR / "__init__.py").read_text()
    assert [t for _, t in imported_modules(source, "edgeyolo", True) if _within(t, "edgeyolo")] == []


def test_targets_package_exists() -> None:
    assert (PACKAGE_DIR / "targets" / "__init__.py").is_file()


def test_board_modules_import_without_torch() -> None:
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError(f"torch is blocked in this test ({name})")
                return None

        sys.meta_path.insert(0, NoTorch())
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the torch blocker did not work")
        import edgeyolo.targets, edgeyolo.targets.jetson, edgeyolo.targets.zynq, edgeyolo.contract, edgeyolo.errors
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not leaked, f"torch modules were imported: {leaked}"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PACKAGE_DIR.parent
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
