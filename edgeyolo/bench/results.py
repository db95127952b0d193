"""Benchmark results history: one SQLite file written by benchmarks and read by ``edgeyolo results``.

Where the database lives
    ``$EDGEYOLO_RESULTS_DB`` if set, else ``$XDG_DATA_HOME/edgeyolo/results.sqlite`` (XDG default
    ``~/.local/share``); every command also takes ``--db``. For nightly hardware-in-the-loop runs keep
    it on the lab host's *local* disk, or give each CI job its own file and keep that as a job artifact
    (``edgeyolo results add`` folds bench JSON from anywhere into one history). Never put it on a
    network filesystem (NFS/SMB): SQLite's file locks are unreliable there, and WAL mode needs shared
    memory between all readers and writers, which a network filesystem cannot give. That is why the
    journal is the rollback journal (``journal_mode=DELETE``), not WAL: the database is then one
    self-contained file with no ``-wal``/``-shm`` siblings to lose when it is copied as an artifact.

Crash safety
    A run's row is inserted as ``running`` in its own committed transaction before the benchmark
    starts; its metrics are written, and the row marked ``complete``, in one transaction at the end.
    A writer killed in between leaves its row ``running`` with its pid, host and process start time;
    the next open on that host marks it ``incomplete`` once that process is gone. A kill inside the
    final transaction leaves a hot journal that SQLite rolls back on the next open, so a run never has
    half of its metrics.

The regression gate is :func:`check_regression`; its rule is written there.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import sqlite3
import statistics
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence

from edgeyolo.errors import EdgeYoloError, InputFileError, UsageError
from edgeyolo.fileio import sha256_file, tree_sha256

if TYPE_CHECKING:
    from edgeyolo.targets.inventory import Device

log = logging.getLogger(__name__)

KINDS = ("host", "board")
STATUSES = ("running", "complete", "incomplete", "failed")

# One tuple of statements per schema version: MIGRATIONS[i] upgrades a database from version i to
# i + 1. Append, never edit: a database records the version it has reached.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (0)",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started TEXT NOT NULL,
            finished TEXT,
            status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'incomplete', 'failed')),
            kind TEXT NOT NULL CHECK (kind IN ('host', 'board')),
            target TEXT NOT NULL,
            device TEXT NOT NULL DEFAULT '',
            label TEXT,
            artifact TEXT,
            artifact_name TEXT,
            artifact_sha256 TEXT,
            command TEXT,
            git_rev TEXT,
            toolchain TEXT NOT NULL DEFAULT '{}',
            board_state TEXT NOT NULL DEFAULT '{}',
            metrics TEXT NOT NULL DEFAULT '{}',
            extra TEXT NOT NULL DEFAULT '{}',
            error TEXT,
            writer_host TEXT,
            writer_pid INTEGER,
            writer_start TEXT
        )""",
        "CREATE INDEX runs_group ON runs (target, device, artifact_name, status, started)",
        "CREATE INDEX runs_status ON runs (status)",
        """CREATE TABLE metrics (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            value REAL NOT NULL,
            unit TEXT,
            PRIMARY KEY (run_id, name)
        )""",
        "CREATE INDEX metrics_name ON metrics (name)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# board-state / toolchain fields that are observations, not settings: never a reason to refuse
VOLATILE_FIELDS = frozenset({"temperature_c", "temp_c", "uptime_s", "timestamp", "hostname"})


def default_db_path() -> Path:
    env = os.environ.get("EDGEYOLO_RESULTS_DB")
    if env:
        return Path(env).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "edgeyolo" / "results.sqlite"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def normalise_time(value: str) -> str:
    """An ISO 8601 timestamp as UTC with microseconds, so the text sorts in time order."""
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        raise UsageError(f"timestamp {value!r} is not ISO 8601 (e.g. 2024-05-01T02:00:00Z)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


def git_rev(cwd: str | Path | None = None) -> Optional[str]:
    """HEAD's commit of the checkout at ``cwd`` (default: here), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev or None


def toolchain_versions(packages: Sequence[str] = ("edgeyolo", "numpy", "onnxruntime", "opencv-python-headless", "torch")) -> dict:
    """Python and installed package versions from metadata (nothing is imported)."""
    import platform
    from importlib import metadata

    versions: dict[str, Any] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys: {'clocks': {'gpu': 1}} -> {'clocks.gpu': 1}."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, tuple[float, Optional[str]]]:
    """The numbers in a metrics dict as {dotted name: (value, unit)}.

    A leaf is a number, or ``{"value": x, "unit": "ms"}``; nested dicts flatten to dotted names
    (``{"latency_ms": {"p50": 9.1}}`` -> ``latency_ms.p50``). Strings, bools and non-finite values stay
    in the run's JSON only: the metrics table is for numbers one can take a median of.
    """
    out: dict[str, tuple[float, Optional[str]]] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and "value" in value and not isinstance(value["value"], Mapping):
                unit = value.get("unit")
                value, unit = value["value"], (str(unit) if unit is not None else None)
            elif isinstance(value, Mapping):
                walk(value, name + ".")
                continue
            else:
                unit = None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            out[name] = (float(value), unit)

    walk(metrics, "")
    return out


@dataclass(frozen=True)
class Run:
    id: int
    started: str
    finished: Optional[str]
    status: str
    kind: str
    target: str
    device: str
    label: Optional[str]
    artifact: Optional[str]
    artifact_name: Optional[str]
    artifact_sha256: Optional[str]
    command: Optional[str]
    git_rev: Optional[str]
    toolchain: dict
    board_state: dict
    metrics: dict  # {name: value}, numbers only (the metrics table)
    units: dict  # {name: unit} where one was given
    raw_metrics: dict  # the metrics as recorded, strings and nesting included
    extra: dict
    error: Optional[str]

    @property
    def group(self) -> tuple[str, str, Optional[str]]:
        """Runs of one group measure the same thing: same target, device and artifact name."""
        return (self.target, self.device, self.artifact_name)

    def matches_ref(self, ref: str) -> bool:
        """A baseline ref names a label, or a git commit (full, or a prefix of 7+ characters)."""
        if self.label == ref or self.git_rev == ref:
            return True
        return len(ref) >= 7 and self.git_rev is not None and self.git_rev.startswith(ref)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _alive(pid: int, start: Optional[str]) -> bool:
    """Whether process ``pid`` still runs and is the one that started the run (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: trust kill(0)
    state, started = stat
    if state in ("Z", "X"):
        return False  # a zombie has finished; only its parent has not reaped it yet
    return start is None or started == start


def _proc_stat(pid: int) -> Optional[tuple[str, str]]:
    """(state, start time in clock ticks since boot) from /proc, or None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parens
    return fields[0], fields[19]


class ResultsStore:
    """The results database. Open it, read and write runs, close it (or use it as a context manager)."""

    def __init__(self, path: str | Path | None = None, *, create: bool = True, timeout: float = 30.0, journal: str = "DELETE"):
        # WAL only where every reader and writer is on this machine's local disk (see the module docstring)
        if journal.upper() not in ("DELETE", "TRUNCATE", "PERSIST", "WAL"):
            raise UsageError(f"journal mode {journal!r}: expected DELETE (default), TRUNCATE, PERSIST or WAL")
        self.path = Path(path) if path is not None else default_db_path()
        if not self.path.exists():
            if not create:
                raise InputFileError(
                    f"no results database at {self.path}: record a run first (edgeyolo results add --json FILE), "
                    "or point --db / $EDGEYOLO_RESULTS_DB at an existing one"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: every transaction below is an explicit BEGIN ... COMMIT
        self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute(f"PRAGMA journal_mode={journal.upper()}")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            self.reaped = self.reap_dead_writers()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise InputFileError(f"{self.path}: not a usable edgeyolo results database ({exc})") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: two writers wait (busy timeout) instead of deadlocking
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ schema

    def schema_version(self) -> int:
        row = self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if row is None:
            return 0
        return int(self.conn.execute("SELECT version FROM schema_version").fetchone()[0])

    def _migrate(self) -> None:
        if self.schema_version() == SCHEMA_VERSION:
            return
        with self._transaction() as conn:
            version = self.schema_version()  # again, under the write lock: another process may have migrated
            if version > SCHEMA_VERSION:
                raise InputFileError(
                    f"{self.path}: results schema version {version} is newer than this edgeyolo's "
                    f"({SCHEMA_VERSION}); upgrade edgeyolo to read it"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = ?", (step + 1,))

    # ------------------------------------------------------------------ writers

    def reap_dead_writers(self) -> list[int]:
        """Mark 'incomplete' the running rows of this host whose writer process is gone; their ids.

        Rows written from another host are left alone: their pid means nothing here.
        """
        host = socket.gethostname()
        rows = self.conn.execute(
            "SELECT id, writer_pid, writer_start FROM runs WHERE status = 'running' AND writer_host = ?", (host,)
        ).fetchall()
        dead = [r for r in rows if r["writer_pid"] is None or not _alive(r["writer_pid"], r["writer_start"])]
        if dead and not os.access(self.path, os.W_OK):
            log.warning("%s is read-only: %d run(s) of dead writers stay 'running'", self.path, len(dead))
            return []
        if dead:
            with self._transaction() as conn:
                for r in dead:
                    conn.execute(
                        "UPDATE runs SET status = 'incomplete', finished = ?, error = ? WHERE id = ? AND status = 'running'",
                        (now_iso(), f"the writer (pid {r['writer_pid']} on {host}) ended before the run finished", r["id"]),
                    )
        return [r["id"] for r in dead]

    def begin_run(
        self,
        *,
        kind: str,
        target: str,
        device: str = "",
        artifact: str | Path | None = None,
        artifact_sha256: Optional[str] = None,
        label: Optional[str] = None,
        command: Optional[str] = None,
        git_rev: Optional[str] = None,
        toolchain: Optional[Mapping[str, Any]] = None,
        board_state: Optional[Mapping[str, Any]] = None,
        extra: Optional[Mapping[str, Any]] = None,
    ) -> int:
        """Insert a 'running' row, committed before the benchmark starts; its id."""
        _check_kind(kind)
        if not target:
            raise UsageError("a run needs a target (e.g. 'jetson-nano', 'zcu104', 'host')")
        if artifact is not None and artifact_sha256 is None and Path(artifact).is_file():
            artifact_sha256 = sha256_file(artifact)
        stat = _proc_stat(os.getpid())
        with self._transaction() as conn:
            cur = conn.execute(
                """INSERT INTO runs (started, status, kind, target, device, label, artifact, artifact_name,
                       artifact_sha256, command, git_rev, toolchain, board_state, extra, writer_host, writer_pid, writer_start)
                   VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    now_iso(), kind, target, device or "", label,
                    None if artifact is None else str(artifact),
                    None if artifact is None else Path(artifact).name,
                    artifact_sha256, command, git_rev,
                    _dumps(toolchain), _dumps(board_state), _dumps(extra),
                    socket.gethostname(), os.getpid(), None if stat is None else stat[1],
                ),
            )
            return int(cur.lastrowid)

    def finish_run(
        self,
        run_id: int,
        metrics: Mapping[str, Any],
        *,
        status: str = "complete",
        error: Optional[str] = None,
        toolchain: Optional[Mapping[str, Any]] = None,
        board_state: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Write a run's metrics and final status in one transaction (all of them or none)."""
        if status not in STATUSES or status == "running":
            raise UsageError(f"a run finishes as complete, incomplete or failed, not {status!r}")
        numbers = numeric_metrics(metrics)
        with self._transaction() as conn:
            conn.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            conn.executemany(
                "INSERT INTO metrics (run_id, name, value, unit) VALUES (?, ?, ?, ?)",
                [(run_id, name, value, unit) for name, (value, unit) in numbers.items()],
            )
            sets = ["status = ?", "finished = ?", "metrics = ?", "error = ?"]
            args: list[Any] = [status, now_iso(), _dumps(metrics), error]
            if toolchain is not None:
                sets.append("toolchain = ?")
                args.append(_dumps(toolchain))
            if board_state is not None:
                sets.append("board_state = ?")
                args.append(_dumps(board_state))
            cur = conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*args, run_id))
            if cur.rowcount != 1:
                raise UsageError(f"no run {run_id} in {self.path}")

    def add_run(self, record: Mapping[str, Any], label: Optional[str] = None) -> int:
        """Store one finished run from a bench JSON object (see :func:`parse_record`); its id."""
        r = parse_record(record)
        with self._transaction() as conn:
            cur = conn.execute(
                """INSERT INTO runs (started, finished, status, kind, target, device, label, artifact, artifact_name,
                       artifact_sha256, command, git_rev, toolchain, board_state, metrics, extra, error)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    r["started"], r["finished"], r["status"], r["kind"], r["target"], r["device"],
                    label if label is not None else r["label"], r["artifact"], r["artifact_name"],
                    r["artifact_sha256"], r["command"], r["git_rev"], _dumps(r["toolchain"]),
                    _dumps(r["board_state"]), _dumps(r["metrics"]), _dumps(r["extra"]), r["error"],
                ),
            )
            run_id = int(cur.lastrowid)
            conn.executemany(
                "INSERT INTO metrics (run_id, name, value, unit) VALUES (?, ?, ?, ?)",
                [(run_id, name, value, unit) for name, (value, unit) in numeric_metrics(r["metrics"]).items()],
            )
        return run_id

    # ------------------------------------------------------------------ readers

    def runs(
        self,
        *,
        target: Optional[str] = None,
        device: Optional[str] = None,
        artifact_name: Optional[str] = None,
        status: Optional[str] = None,
        ref: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> list[Run]:
        """Runs matching every given filter, newest first (by start time, then id)."""
        where, args = [], []
        for column, value in (("target", target), ("device", device), ("artifact_name", artifact_name), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY started DESC, id DESC"
        rows = self.conn.execute(sql, args).fetchall()
        runs = self._load(rows)
        if ref is not None:
            runs = [r for r in runs if r.matches_ref(ref)]
        return runs if limit is None else runs[:limit]

    def get(self, run_id: int) -> Run:
        rows = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchall()
        if not rows:
            raise UsageError(f"no run {run_id} in {self.path} (see 'edgeyolo results list')")
        return self._load(rows)[0]

    def _load(self, rows: Sequence[sqlite3.Row]) -> list[Run]:
        metrics: dict[int, dict[str, float]] = {}
        units: dict[int, dict[str, str]] = {}
        ids = [r["id"] for r in rows]
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            marks = ",".join("?" * len(chunk))
            for m in self.conn.execute(f"SELECT run_id, name, value, unit FROM metrics WHERE run_id IN ({marks})", chunk):
                metrics.setdefault(m["run_id"], {})[m["name"]] = m["value"]
                if m["unit"] is not None:
                    units.setdefault(m["run_id"], {})[m["name"]] = m["unit"]
        return [
            Run(
                id=r["id"], started=r["started"], finished=r["finished"], status=r["status"], kind=r["kind"],
                target=r["target"], device=r["device"], label=r["label"], artifact=r["artifact"],
                artifact_name=r["artifact_name"], artifact_sha256=r["artifact_sha256"], command=r["command"],
                git_rev=r["git_rev"], toolchain=json.loads(r["toolchain"]), board_state=json.loads(r["board_state"]),
                metrics=metrics.get(r["id"], {}), units=units.get(r["id"], {}), raw_metrics=json.loads(r["metrics"]),
                extra=json.loads(r["extra"]), error=r["error"],
            )
            for r in rows
        ]


def _dumps(value: Optional[Mapping[str, Any]]) -> str:
    return json.dumps(dict(value or {}), sort_keys=True, default=str)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UsageError(f"run kind {kind!r}: expected one of {', '.join(KINDS)}")


_RECORD_KEYS = (
    "kind", "target", "device", "label", "artifact", "artifact_name", "artifact_sha256", "command", "git_rev",
    "started", "finished", "status", "toolchain", "board_state", "metrics", "error",
)


def parse_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a bench JSON object (``edgeyolo bench ... --json``) into the columns of a finished run.

    Required: ``target`` and a non-empty ``metrics`` dict. Optional: kind (default 'board'), device,
    label, artifact (path), artifact_name, artifact_sha256, command, git_rev, started/finished (ISO
    8601), status ('complete' or 'failed'), toolchain and board_state (dicts), error. Any other key is
    kept in the run's ``extra`` JSON, so a bench may emit more than this schema knows.
    """
    if not isinstance(record, Mapping):
        raise UsageError(f"a run record is a JSON object, not {type(record).__name__}")
    r = {k: record.get(k) for k in _RECORD_KEYS}
    r["extra"] = {k: v for k, v in record.items() if k not in _RECORD_KEYS}
    if not isinstance(r["target"], str) or not r["target"]:
        raise UsageError("a run record needs \"target\": a non-empty string (e.g. \"jetson-nano\")")
    if not isinstance(r["metrics"], Mapping) or not numeric_metrics(r["metrics"]):
        raise UsageError("a run record needs \"metrics\": an object with at least one number (e.g. {\"fps\": 31.2})")
    for key in ("toolchain", "board_state"):
        if r[key] is None:
            r[key] = {}
        elif not isinstance(r[key], Mapping):
            raise UsageError(f"a run record's {key!r} must be an object, not {type(r[key]).__name__}")
    r["kind"] = r["kind"] or "board"
    _check_kind(r["kind"])
    r["device"] = str(r["device"] or "")
    r["status"] = r["status"] or "complete"
    if r["status"] not in ("complete", "failed"):
        raise UsageError(f"a recorded run's status is 'complete' or 'failed', not {r['status']!r}")
    sha = r["artifact_sha256"]
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
        raise UsageError(f"artifact_sha256 {sha!r} is not 64 hex digits")
    r["artifact_sha256"] = sha.lower() if sha else None
    if r["artifact"] is not None:
        r["artifact"] = str(r["artifact"])
    if r["artifact_name"] is None and r["artifact"]:
        r["artifact_name"] = Path(r["artifact"]).name
    finished = r["finished"] or r["started"] or now_iso()
    r["finished"] = normalise_time(finished)
    r["started"] = normalise_time(r["started"] or finished)
    return r


class RunRecorder:
    """What the body of :func:`record_run` fills in; written when the block ends."""

    def __init__(self, run_id: int, board_state: Optional[Mapping[str, Any]], toolchain: Optional[Mapping[str, Any]]):
        self.id = run_id
        self.metrics: dict[str, Any] = {}
        self.board_state: dict[str, Any] = dict(board_state or {})
        self.toolchain: dict[str, Any] = dict(toolchain or {})

    def metric(self, name: str, value: float, unit: Optional[str] = None) -> None:
        self.metrics[name] = value if unit is None else {"value": value, "unit": unit}


@contextlib.contextmanager
def record_run(
    db: "ResultsStore | str | Path | None" = None,
    *,
    kind: str,
    target: str,
    device: str = "",
    artifact: str | Path | None = None,
    artifact_sha256: Optional[str] = None,  # default: the artifact file's own hash
    label: Optional[str] = None,
    command: Optional[str] = None,
    board_state: Optional[Mapping[str, Any]] = None,
    toolchain: Optional[Mapping[str, Any]] = None,
    rev: Optional[str] = None,
) -> Iterator[RunRecorder]:
    """Record one benchmark run around a block::

        with record_run(kind="board", target="jetson-nano", artifact=engine, board_state=state) as run:
            run.metric("fps", fps)

    The row is committed as 'running' before the block; metrics (and board state / toolchain, which
    the block may update) are written with status 'complete' when it ends, 'failed' if it raises,
    'incomplete' if it is interrupted (KeyboardInterrupt, SystemExit).
    """
    store = db if isinstance(db, ResultsStore) else ResultsStore(db)
    try:
        run_id = store.begin_run(
            kind=kind, target=target, device=device, artifact=artifact, artifact_sha256=artifact_sha256, label=label, command=command,
            git_rev=rev if rev is not None else git_rev(), toolchain=toolchain, board_state=board_state,
        )
        rec = RunRecorder(run_id, board_state, toolchain if toolchain is not None else toolchain_versions())
        try:
            yield rec
        except Exception as exc:
            store.finish_run(run_id, rec.metrics, status="failed", error=f"{type(exc).__name__}: {exc}",
                             board_state=rec.board_state, toolchain=rec.toolchain)
            raise
        except BaseException as exc:
            store.finish_run(run_id, rec.metrics, status="incomplete", error=f"interrupted ({type(exc).__name__})",
                             board_state=rec.board_state, toolchain=rec.toolchain)
            raise
        store.finish_run(run_id, rec.metrics, board_state=rec.board_state, toolchain=rec.toolchain)
    finally:
        if store is not db:
            store.close()


class DeviceBenchRun:
    """The results-database row of one board bench (``edgeyolo bench device --record``), open while
    the board is benched: ``device`` is the board's inventory entry (connect with it, so the
    inventory is read once); :meth:`store` takes the bench's payload."""

    def __init__(self, run: RunRecorder, device: "Device"):
        self.run = run
        self.device = device

    @property
    def id(self) -> int:
        return self.run.id

    def store(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Take the metrics and board conditions of a ``bench device --json`` payload into the row;
        returns what was recorded (the payload's ``recorded_run``: id, metrics, board_state, toolchain)."""
        from edgeyolo.bench.board import bench_metrics, board_conditions

        self.run.metrics.update(bench_metrics(dict(payload)))
        state, toolchain = board_conditions(dict(payload))
        self.run.board_state.update(state)
        self.run.toolchain.update(toolchain)
        return {"id": self.run.id, "metrics": self.run.metrics, "board_state": state, "toolchain": toolchain}


@contextlib.contextmanager
def record_device_bench(
    db: "ResultsStore | str | Path | None" = None,
    *,
    device: "str | Device",
    artifact: str | Path,
    inventory: str | Path | None = None,
    label: Optional[str] = None,
    command: Optional[str] = None,
) -> Iterator[DeviceBenchRun]:
    """Record one board bench around a block::

        with record_device_bench(db, device="nano", artifact=model) as run:
            with connect(run.device) as transport:
                payload = ...
            payload["recorded_run"] = run.store(payload)

    ``device`` is an inventory name (looked up in ``inventory``) or an entry already resolved; the
    run is stored under its name and target. The row (kind 'board') is committed as 'running' before
    the block, so a bench that never reaches the board is stored as 'failed' (see :func:`record_run`).
    A bundle folder is hashed whole (:func:`edgeyolo.fileio.tree_sha256`); board state and toolchain
    come from the payload only.
    """
    from edgeyolo.targets.connect import resolve_device

    artifact = Path(artifact)
    if not artifact.exists():
        raise InputFileError(f"--model {artifact}: no such file or folder")
    dev = resolve_device(device, inventory)
    sha = tree_sha256(artifact) if artifact.is_dir() else sha256_file(artifact)
    with record_run(
        db, kind="board", target=dev.target, device=dev.name, artifact=artifact.resolve(), artifact_sha256=sha,
        label=label, command=command, board_state={}, toolchain={},
    ) as run:
        yield DeviceBenchRun(run, dev)


# ---------------------------------------------------------------------- comparing runs


@dataclass(frozen=True)
class StateDifference:
    """One board-state or toolchain field whose value is not the same in every compared run."""

    field: str
    values: dict  # {value as JSON text: [run ids]}

    def describe(self, roles: Optional[Mapping[int, str]] = None) -> str:
        """'field: "MAXN" (baseline runs 1, 2) vs "5W" (candidate run 7)'; roles name each run's side."""
        parts = []
        for value, ids in self.values.items():
            sides: dict[str, list[int]] = {}
            for run_id in sorted(ids):
                sides.setdefault((roles or {}).get(run_id, ""), []).append(run_id)
            where = "; ".join(
                f"{role + ' ' if role else ''}run{'s' if len(xs) > 1 else ''} {', '.join(map(str, xs))}" for role, xs in sides.items()
            )
            parts.append(f"{value} ({where})")
        return f"{self.field}: " + " vs ".join(parts)


MISSING = "<missing>"


def state_differences(runs: Sequence[Run], ignore: Sequence[str] = ()) -> list[StateDifference]:
    """Fields of board_state and toolchain (flattened, dotted) that differ between any of ``runs``.

    A field missing from some runs differs too. Fields named in ``ignore`` (full dotted name, or the
    last part) and :data:`VOLATILE_FIELDS` are observations, not settings, and are skipped.
    """
    ignored = set(ignore) | VOLATILE_FIELDS
    states = []
    for run in runs:
        flat = {f"board_state.{k}": v for k, v in flatten(run.board_state).items()}
        flat.update({f"toolchain.{k}": v for k, v in flatten(run.toolchain).items()})
        states.append({k: v for k, v in flat.items() if not ({k, k.split(".", 1)[1], k.rsplit(".", 1)[-1]} & ignored)})
    fields = sorted({k for s in states for k in s})
    found = []
    for name in fields:
        values: dict[str, list[int]] = {}
        for run, state in zip(runs, states):
            text = json.dumps(state[name], sort_keys=True) if name in state else MISSING
            values.setdefault(text, []).append(run.id)
        if len(values) > 1:
            found.append(StateDifference(name, values))
    return found


_HIGHER = {"fps", "throughput", "qps", "ips", "per", "img_s", "gflops", "tops", "accuracy", "map", "ap", "recall", "precision"}
_LOWER = {"ms", "us", "s", "sec", "seconds", "latency", "time", "mb", "mib", "memory", "power", "w", "watts", "mw", "energy", "uj", "mj"}


def infer_direction(metric: str) -> Optional[bool]:
    """True if a bigger value of this metric is better, False if smaller is, None if the name won't say."""
    tokens = [t for t in re.split(r"[^a-z0-9]+", metric.lower()) if t]
    if any(t in _HIGHER or re.fullmatch(r"map\d*|ap\d*", t) for t in tokens):
        return True
    if any(t in _LOWER for t in tokens):
        return False
    return None


def robust_spread(values: Sequence[float]) -> float:
    """1.4826 · MAD: a standard-deviation estimate that one outlier run cannot inflate."""
    centre = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - centre) for v in values)


class NotEnoughRuns(UsageError):
    """The gate has fewer runs than --runs asks for; it will not judge on less."""


class RegressionFound(EdgeYoloError):
    """The regression gate failed: the candidate is worse than the baseline by more than the band."""

    exit_code = 1


class GateRefused(EdgeYoloError):
    """The regression gate would not compare runs measured under different board state / toolchains."""

    exit_code = 2


@dataclass(frozen=True)
class GateResult:
    verdict: str  # 'pass' | 'regression' | 'refused'
    metric: str
    higher_is_better: bool
    baseline_ref: str
    group: tuple
    baseline_ids: tuple
    candidate_ids: tuple
    baseline_median: Optional[float] = None
    candidate_median: Optional[float] = None
    change_pct: Optional[float] = None
    band_pct: Optional[float] = None
    user_band_pct: Optional[float] = None
    noise_band_pct: Optional[float] = None
    differences: tuple = field(default_factory=tuple)

    @property
    def exit_code(self) -> int:
        return {"pass": 0, "regression": RegressionFound.exit_code, "refused": GateRefused.exit_code}[self.verdict]

    def raise_for_verdict(self, message: Optional[str] = None) -> None:
        """Raise RegressionFound / GateRefused (exit 1 / 2) unless the gate passed."""
        if self.verdict != "pass":
            error = RegressionFound if self.verdict == "regression" else GateRefused
            raise error(message or self.describe())

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["differences"] = [{"field": x.field, "values": x.values} for x in self.differences]
        d["exit_code"] = self.exit_code
        return d

    def describe(self) -> str:
        target, device, artifact = self.group
        where = f"{target}/{device or '-'}/{artifact or '-'}"
        if self.verdict == "refused":
            lines = [
                (f"REFUSED {self.metric} on {where}: the runs were not measured under the same board state / "
                 "toolchain, so their numbers are not comparable. Differing fields:")
            ]
            roles = {**{i: "candidate" for i in self.candidate_ids}, **{i: "baseline" for i in self.baseline_ids}}
            lines += [f"  {d.describe(roles)}" for d in self.differences]
            lines.append("Re-run under matching settings, or --ignore-field NAME for a field that does not matter.")
            return "\n".join(lines)
        sense = "higher is better" if self.higher_is_better else "lower is better"
        return (
            f"{'PASS' if self.verdict == 'pass' else 'REGRESSION'} {self.metric} ({sense}) on {where}: "
            f"candidate median {self.candidate_median:.4g} (runs {', '.join(map(str, self.candidate_ids))}) vs "
            f"baseline {self.baseline_ref!r} median {self.baseline_median:.4g} (runs {', '.join(map(str, self.baseline_ids))}): "
            f"{self.change_pct:+.2f} %, band ±{self.band_pct:.2f} % "
            f"(max of --band {self.user_band_pct:.2f} % and noise {self.noise_band_pct:.2f} %)"
        )


def check_regression(
    store: ResultsStore,
    baseline: str,
    *,
    metric: str = "fps",
    higher_is_better: Optional[bool] = None,
    runs: int = 5,
    band_pct: float = 5.0,
    k: float = 3.0,
    candidate: Optional[int] = None,
    target: Optional[str] = None,
    device: Optional[str] = None,
    artifact_name: Optional[str] = None,
    ignore_fields: Sequence[str] = (),
) -> GateResult:
    """The noise-aware regression gate.

    Rule:
      1. Candidate = the newest complete run (or run ``candidate``) matching the filters that is not a
         baseline run and has ``metric``. Its group is (target, device, artifact name).
      2. Candidate runs C = the ``runs`` newest complete runs of the group, up to the candidate, not
         matching ``baseline``; baseline runs B = the ``runs`` newest complete runs of the group whose
         label or git rev is ``baseline``. Fewer than ``runs`` of either: NotEnoughRuns (no verdict).
      3. If any board-state or toolchain field differs between any two runs of B ∪ C: 'refused'.
      4. band = max(band_pct, k · 1.4826 · MAD(B) / |median(B)| · 100) percent, so a noisy baseline
         widens the band and a quiet one falls back to the user's band.
      5. change = (median(C) − median(B)) / |median(B)|. Regression when change < −band (higher is
         better) or change > +band (lower is better); otherwise pass.
    """
    if runs < 1:
        raise UsageError("--runs must be at least 1")
    if band_pct < 0 or k < 0:
        raise UsageError("--band and --k must not be negative")
    if higher_is_better is None:
        higher_is_better = infer_direction(metric)
        if higher_is_better is None:
            raise UsageError(f"cannot tell whether more {metric!r} is better: pass --higher-better or --lower-better")
    if candidate is not None:
        anchor = store.get(candidate)
        if anchor.status != "complete" or metric not in anchor.metrics:
            raise UsageError(f"run {candidate} is {anchor.status} and has {'' if metric in anchor.metrics else 'no '}"
                             f"metric {metric!r}: the candidate must be a complete run with that metric")
    else:
        pool = [r for r in store.runs(target=target, device=device, artifact_name=artifact_name, status="complete")
                if metric in r.metrics and not r.matches_ref(baseline)]
        if not pool:
            raise NotEnoughRuns(f"no complete run with metric {metric!r} outside baseline {baseline!r} matches "
                                "the filters: nothing to check (see 'edgeyolo results list')")
        anchor = pool[0]
    group = store.runs(target=anchor.target, device=anchor.device, status="complete")
    group = [r for r in group if r.artifact_name == anchor.artifact_name and metric in r.metrics]
    position = [r.id for r in group].index(anchor.id)
    cands = [r for r in group[position:] if not r.matches_ref(baseline)][:runs]
    bases = [r for r in group if r.matches_ref(baseline)][:runs]
    where = f"target {anchor.target!r}, device {anchor.device!r}, artifact {anchor.artifact_name!r}"
    for name, found in (("candidate", cands), (f"baseline {baseline!r}", bases)):
        if len(found) < runs:
            raise NotEnoughRuns(
                f"found {len(found)} complete {name} run{'s' if len(found) != 1 else ''} with metric {metric!r} for "
                f"{where}; --runs {runs} needs {runs}: record more runs or lower --runs"
            )
    common = dict(metric=metric, higher_is_better=higher_is_better, baseline_ref=baseline, group=anchor.group,
                  baseline_ids=tuple(r.id for r in bases), candidate_ids=tuple(r.id for r in cands))
    diffs = state_differences(bases + cands, ignore_fields)
    if diffs:
        return GateResult("refused", differences=tuple(diffs), **common)
    b_values = [r.metrics[metric] for r in bases]
    b_med = statistics.median(b_values)
    c_med = statistics.median(r.metrics[metric] for r in cands)
    if b_med == 0:
        raise UsageError(f"the baseline median of {metric!r} is 0: a relative band is undefined")
    noise = 100.0 * k * robust_spread(b_values) / abs(b_med)
    band = max(band_pct, noise)
    change = 100.0 * (c_med - b_med) / abs(b_med)
    worse = change < -band if higher_is_better else change > band
    return GateResult(
        "regression" if worse else "pass", baseline_median=b_med, candidate_median=c_med, change_pct=change,
        band_pct=band, user_band_pct=band_pct, noise_band_pct=noise, **common,
    )
