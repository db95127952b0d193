"""Package layering: no module imports an edgeyolo module from a higher layer, or across a "never" arrow.

Layers, lowest first (a module may import its own layer and those below it):

    0  leaves: edgeyolo (the top __init__), .errors, .registry, .log, .contract, .heap, .fileio
    1  edgeyolo.targets (the board side: profiles, families, transports, runners, parsers)
    2  edgeyolo.model, edgeyolo.data
    3  edgeyolo.train, edgeyolo.compress
    4  edgeyolo.export, edgeyolo.runtime, edgeyolo.adapt
    5  edgeyolo.bench
    6  edgeyolo.pipeline
    7  edgeyolo.cli

Arrows that must never exist whatever the layers say (``NEVER``): targets ↛ model, train, compress;
model ↛ train, cli; compress ↛ export, train; targets.jetson ↛ targets.zynq and back; a leaf ↛ any
non-leaf; and ``edgeyolo/__init__.py`` imports nothing from edgeyolo. Every import counts: at module
level, inside functions, under ``TYPE_CHECKING`` and through ``importlib.import_module``. The board
side imports without torch and without the model code.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "edgeyolo"

LEAVES = ("edgeyolo", "edgeyolo.errors", "edgeyolo.registry", "edgeyolo.log", "edgeyolo.contract", "edgeyolo.heap", "edgeyolo.fileio")

LAYERS: dict[str, int] = {
    **{leaf: 0 for leaf in LEAVES},
    "edgeyolo.targets": 1,
    "edgeyolo.model": 2,
    "edgeyolo.data": 2,
    "edgeyolo.train": 3,
    "edgeyolo.compress": 3,
    "edgeyolo.export": 4,
    "edgeyolo.runtime": 4,
    "edgeyolo.adapt": 4,
    "edgeyolo.bench": 5,
    "edgeyolo.pipeline": 6,
    "edgeyolo.cli": 7,
}

# (importer subtree, subtrees it must never import); leaves are checked separately
NEVER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("edgeyolo.targets", ("edgeyolo.model", "edgeyolo.train", "edgeyolo.compress")),
    ("edgeyolo.model", ("edgeyolo.train", "edgeyolo.cli")),
    ("edgeyolo.compress", ("edgeyolo.export", "edgeyolo.train")),
    ("edgeyolo.targets.jetson", ("edgeyolo.targets.zynq",)),
    ("edgeyolo.targets.zynq", ("edgeyolo.targets.jetson",)),
)

FIXTURES = Path(__file__).parent / "fixtures" / "layering"

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
        for source_tree, forbidden in NEVER:
            for theirs in forbidden:
                if _within(module, source_tree) and _within(target, theirs):
                    problems.setdefault((line, theirs), f"{module}:{line}: {source_tree} must never import {theirs}")
        if is_leaf(module) and not is_leaf(target):
            problems.setdefault((line, "leaf"), f"{module}:{line}: the leaf {module} must not import {target}")
    return list(problems.values())


def is_leaf(module: str) -> bool:
    """A leaf module, or a name taken from one (``edgeyolo.errors.UsageError``, ``edgeyolo.__version__``)."""
    if module == "edgeyolo" or module.startswith("edgeyolo.__"):
        return True
    return any(_within(module, leaf) for leaf in LEAVES if leaf != "edgeyolo")


def package_modules() -> list[tuple[Path, str, bool]]:
    return [(path, *module_name(path)) for path in sorted(PACKAGE_DIR.rglob("*.py"))]


# ---------------------------------------------------------------- the checker itself


def test_checker_reports_an_upward_import() -> None:
    source = "import numpy\nfrom edgeyolo.errors import UsageError\nfrom edgeyolo.cli.app import app\n"
    problems = check_source(source, "edgeyolo.model.x")
    assert sorted(problems) == [
        "edgeyolo.model.x:3: edgeyolo.model must never import edgeyolo.cli",
        "edgeyolo.model.x:3: layer 2 imports edgeyolo.cli.app of higher layer 7",
    ]


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
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edgeyolo.model.darknet import Darknet\n", "edgeyolo.targets.runner", False),
        ("from edgeyolo.train.sparsity import PruneMode\n", "edgeyolo.compress.prune.budget", False),  # same layer, never
        ("from edgeyolo.export.onnx import export_onnx\n", "edgeyolo.compress.quant.artifacts", False),  # higher and never
        ("from edgeyolo.targets.profiles import TARGETS\n", "edgeyolo.fileio", False),  # a leaf imports a non-leaf
        ("from edgeyolo.cli import app\n", "edgeyolo.model.cfg", False),
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
        ("from edgeyolo.targets.profiles import get_target\n", "edgeyolo.adapt.check", False),  # profiles are low
        ("from edgeyolo.errors import UsageError\nfrom edgeyolo import __version__\n", "edgeyolo.registry", False),
        ("from edgeyolo.fileio import sha256_file\n", "edgeyolo.targets.transport", False),
        ("from edgeyolo.compress.prune.prunable import PruneMode\n", "edgeyolo.train.sparsity", False),
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


def package_problems(modules: list[tuple[Path, str, bool]]) -> list[str]:
    return [p for path, name, is_package in modules for p in check_source(path.read_text(), name, is_package)]


def test_every_module_respects_the_layers() -> None:
    modules = package_modules()
    assert len(modules) > 10, f"found only {len(modules)} modules under {PACKAGE_DIR}"
    problems = package_problems(modules)
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_a_module_that_breaks_an_arrow_fails_the_package_check() -> None:
    """The fixture, read as if it were edgeyolo/targets/scoring.py, fails the same check the package passes."""
    fixture = FIXTURES / "board_side_scoring.py"
    problems = package_problems([*package_modules(), (fixture, "edgeyolo.targets.scoring", False)])
    found = sorted(p for p in problems if p.startswith("edgeyolo.targets.scoring:"))
    assert found == [
        "edgeyolo.targets.scoring:13: edgeyolo.targets must never import edgeyolo.model",
        "edgeyolo.targets.scoring:13: layer 1 imports edgeyolo.model.darknet of higher layer 2",
        "edgeyolo.targets.scoring:17: edgeyolo.targets must never import edgeyolo.train",
        "edgeyolo.targets.scoring:17: layer 1 imports edgeyolo.train.metrics of higher layer 3",
        "edgeyolo.targets.scoring:27: edgeyolo.targets must never import edgeyolo.compress",
        "edgeyolo.targets.scoring:27: layer 1 imports edgeyolo.compress.prune of higher layer 3",
    ]


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
        import importlib, pkgutil
        import edgeyolo.targets, edgeyolo.contract, edgeyolo.errors
        names = [m.name for m in pkgutil.walk_packages(edgeyolo.targets.__path__, "edgeyolo.targets.")]
        assert len(names) > 15, names
        for name in names:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not leaked, f"torch modules were imported: {leaked}"
        model_side = ("model", "data", "train", "compress", "export", "runtime", "adapt", "bench", "pipeline", "cli")
        leaked = sorted(m for m in sys.modules if m.split(".")[:2] in [["edgeyolo", s] for s in model_side])
        assert not leaked, f"the board side loaded: {leaked}"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PACKAGE_DIR.parent
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
