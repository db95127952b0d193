"""Run a GitHub Actions job's ``run:`` steps here, as the runner would, so a workflow is tested by
executing it rather than by reading it.

What is modelled: the expression subset the workflows use (context properties, string and number
literals, ``== != ! && ||``, parentheses, ``always() success() failure() cancelled()``); workflow,
job and step ``env``; ``if:``; ``shell: bash`` (run with ``-euo pipefail``, stricter than the
runner's ``-eo pipefail`` so a variable the workflow forgot to define fails); and the files a step
talks to the runner through: GITHUB_ENV (``K=V`` and ``K<<EOF`` blocks), GITHUB_PATH, GITHUB_OUTPUT
and GITHUB_STEP_SUMMARY. ``uses:`` steps are not run (they are GitHub's), and neither is a step
whose id the caller names in ``skip``.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

CONTEXTS = ("github", "env", "vars", "secrets", "inputs", "matrix", "runner", "job", "steps", "strategy")
EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def load_workflow(path: str | Path) -> dict:
    """The workflow as a dict, with PyYAML's YAML-1.1 reading of the key ``on`` (True) undone."""
    data = yaml.safe_load(Path(path).read_text())
    if True in data:
        data["on"] = data.pop(True)
    return data


class ExpressionError(AssertionError):
    """An expression this model does not understand, or a reference it cannot resolve."""


_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op>==|!=|&&|\|\||[!().])"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_-]*))")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpressionError(f"cannot read expression {text!r} at {text[pos:]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def truthy(value: Any) -> bool:
    return value not in (None, False, "", 0)


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Parser:
    def __init__(self, text: str, ctx: Mapping[str, Any], status: str) -> None:
        self.text, self.ctx, self.status = text, ctx, status
        self.toks, self.i = _tokens(text), 0

    def peek(self) -> Optional[str]:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self, expected: Optional[str] = None) -> tuple[str, str]:
        if self.i >= len(self.toks) or (expected is not None and self.toks[self.i][1] != expected):
            raise ExpressionError(f"expected {expected or 'more'} in {self.text!r}")
        self.i += 1
        return self.toks[self.i - 1]

    def parse(self) -> Any:
        value = self.or_()
        if self.i != len(self.toks):
            raise ExpressionError(f"unexpected {self.peek()!r} in {self.text!r}")
        return value

    def or_(self) -> Any:
        value = self.and_()
        while self.peek() == "||":
            self.take()
            right = self.and_()
            value = value if truthy(value) else right
        return value

    def and_(self) -> Any:
        value = self.cmp()
        while self.peek() == "&&":
            self.take()
            right = self.cmp()
            value = right if truthy(value) else value
        return value

    def cmp(self) -> Any:
        left = self.unary()
        if self.peek() in ("==", "!="):
            op = self.take()[1]
            right = self.unary()
            # GitHub compares strings case-insensitively
            a, b = (x.lower() if isinstance(x, str) else x for x in (left, right))
            return (a == b) if op == "==" else (a != b)
        return left

    def unary(self) -> Any:
        if self.peek() == "!":
            self.take()
            return not truthy(self.unary())
        return self.primary()

    def primary(self) -> Any:
        kind, tok = self.take()
        if tok == "(":
            value = self.or_()
            self.take(")")
            return value
        if kind == "str":
            return tok[1:-1].replace("''", "'")
        if kind == "num":
            return float(tok) if "." in tok else int(tok)
        if kind != "name":
            raise ExpressionError(f"unexpected {tok!r} in {self.text!r}")
        if tok in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[tok]
        if self.peek() == "(":
            self.take("(")
            self.take(")")
            functions = {"always": True, "success": self.status == "success", "failure": self.status == "failure",
                         "cancelled": False}
            if tok not in functions:
                raise ExpressionError(f"function {tok}() is not modelled ({self.text!r})")
            return functions[tok]
        if tok not in CONTEXTS:
            raise ExpressionError(f"unknown context {tok!r} in {self.text!r}")
        if tok not in self.ctx:
            raise ExpressionError(f"context {tok!r} is not available here ({self.text!r})")
        value: Any = self.ctx[tok]
        path = tok
        while self.peek() == ".":
            self.take()
            _, key = self.take()
            path += "." + key
            if tok == "matrix" and key not in value:
                raise ExpressionError(f"{path}: the matrix entry has no {key!r} ({self.text!r})")
            value = value.get(key) if isinstance(value, Mapping) else None
        return value


def evaluate(expr: str, ctx: Mapping[str, Any], status: str = "success") -> Any:
    """One expression (the text inside ``${{ }}``, or a bare ``if:``)."""
    return _Parser(expr, ctx, status).parse()


def substitute(text: str, ctx: Mapping[str, Any]) -> str:
    """Every ``${{ … }}`` in ``text`` replaced by its value; what cannot be evaluated raises."""
    out = EXPR.sub(lambda m: as_text(evaluate(m.group(1), ctx)), str(text))
    if "${{" in out:
        raise ExpressionError(f"an expression was left unsubstituted: {out!r}")
    return out


def condition(text: Any, ctx: Mapping[str, Any], status: str) -> bool:
    if text is None:
        return status == "success"
    if isinstance(text, bool):
        return text
    body = str(text).strip()
    m = re.fullmatch(r"\$\{\{(.*)\}\}", body, re.S)
    return truthy(evaluate(m.group(1) if m else body, ctx, status))


@dataclass
class StepResult:
    id: str
    name: str
    outcome: str  # success | failure | skipped
    code: Optional[int] = None
    output: str = ""
    script: str = ""
    summary: str = ""


@dataclass
class JobResult:
    status: str
    steps: list[StepResult] = field(default_factory=list)
    env: dict = field(default_factory=dict)  # the job env at the end, GITHUB_ENV additions included

    def step(self, step_id: str) -> StepResult:
        return next(s for s in self.steps if s.id == step_id)

    @property
    def summary(self) -> str:
        return "".join(s.summary for s in self.steps)


def _read_env_file(text: str) -> dict[str, str]:
    """GITHUB_ENV's two forms: ``NAME=value`` and ``NAME<<DELIM`` … ``DELIM``."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            body = []
            i += 1
            while i < len(lines) and lines[i] != delim:
                body.append(lines[i])
                i += 1
            out[name] = "\n".join(body)
        elif "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
        i += 1
    return out


def run_job(
    workflow: Mapping[str, Any],
    job_id: str,
    matrix: Mapping[str, Any],
    contexts: Mapping[str, Any],
    *,
    cwd: Path,
    scratch: Path,
    skip: tuple[str, ...] = (),
    only: Optional[tuple[str, ...]] = None,
    env: Optional[Mapping[str, str]] = None,
    base_env: Optional[Mapping[str, str]] = None,
    timeout: float = 300.0,
) -> JobResult:
    """Run ``job_id``'s steps for one matrix entry. ``contexts`` gives github/vars/secrets/inputs/runner;
    ``env`` is extra job env (e.g. a previous run's GITHUB_ENV); ``only`` runs just those step ids
    (the others count as skipped). The job stops at the first failing step, as on GitHub: later
    steps run only when their ``if:`` says always() or failure()."""
    job = workflow["jobs"][job_id]
    ctx: dict[str, Any] = {name: dict(contexts.get(name) or {}) for name in ("github", "vars", "secrets", "inputs", "runner")}
    ctx["matrix"] = dict(matrix)
    ctx["env"] = {}
    for level in (workflow.get("env") or {}, job.get("env") or {}):
        for key, value in level.items():
            ctx["env"][key] = substitute(value, ctx)
    ctx["env"].update(env or {})
    shell = ((job.get("defaults") or workflow.get("defaults") or {}).get("run") or {}).get("shell", "bash")
    process_env = dict(base_env if base_env is not None else os.environ)
    paths: list[str] = []
    status = "success"
    results = []
    scratch.mkdir(parents=True, exist_ok=True)
    for index, step in enumerate(job["steps"]):
        step_id = step.get("id") or f"step{index}"
        name = step.get("name") or step.get("uses") or step_id
        selected = (only is None or step_id in only) and step_id not in skip
        if "uses" in step or not selected or not condition(step.get("if"), ctx, status):
            results.append(StepResult(step_id, name, "skipped"))
            continue
        step_shell = step.get("shell", shell)
        if step_shell != "bash":
            raise AssertionError(f"step {step_id}: shell {step_shell!r} is not modelled (bash only)")
        step_env = dict(ctx["env"])
        for key, value in (step.get("env") or {}).items():
            step_env[key] = substitute(value, {**ctx, "env": step_env})
        script = substitute(step["run"], {**ctx, "env": step_env})
        files = {k: scratch / f"{index:02d}-{k.lower()}" for k in ("GITHUB_ENV", "GITHUB_PATH", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY")}
        for f in files.values():
            f.write_text("")
        script_file = scratch / f"{index:02d}-{step_id}.sh"
        script_file.write_text(script)
        full_env = {**process_env, **step_env, **{k: str(v) for k, v in files.items()}}
        full_env["PATH"] = os.pathsep.join([*reversed(paths), process_env.get("PATH", "")])
        workdir = cwd / step["working-directory"] if step.get("working-directory") else cwd
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-euo", "pipefail", str(script_file)], cwd=workdir,
                              env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        outcome = "success" if proc.returncode == 0 else "failure"
        results.append(StepResult(step_id, name, outcome, proc.returncode, proc.stdout, script,
                                  files["GITHUB_STEP_SUMMARY"].read_text()))
        ctx["env"].update(_read_env_file(files["GITHUB_ENV"].read_text()))
        paths += [p for p in files["GITHUB_PATH"].read_text().splitlines() if p.strip()]
        if outcome == "failure":
            status = "failure"
    return JobResult(status, results, dict(ctx["env"]))
