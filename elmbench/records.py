"""Run folders: `run.json` (who, what, where) and append-only `records.jsonl`, schema-versioned.

Each finished case is one line, flushed and fsynced at once; a run folder is never overwritten,
an interrupted run is resumed by skipping its finished cases; readers refuse unknown schemas.
"""

from __future__ import annotations

import json
import math
import os
import platform
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any

from elmbench import __version__
from elmbench.errors import ConfigError, ElmbenchError, UnknownNameError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
RUN_KINDS = ("throughput", "profile", "accuracy")
STATUSES = ("ok", "failed", "skipped")
RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
TRUNCATED_FILE = "records.jsonl.truncated"  # where resume keeps a crash's partial last line
ENV_REPORTS = "ELMBENCH_REPORTS"
DEFAULT_ROOT = "reports"

Record = dict[str, Any]
_RESERVED = ("schema_version", "run_id", "case_id", "status", "reason", "case_keys")


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def reports_root(root: str | Path | None = None) -> Path:
    """Where run folders go: `root` if given, else $ELMBENCH_REPORTS, else ./reports."""
    return Path(root or os.environ.get(ENV_REPORTS) or DEFAULT_ROOT)


def new_run_id(kind: str, now: datetime | None = None, suffix: str | None = None) -> str:
    """`20261123-061502-throughput-<short git sha, or random hex>` (UTC time)."""
    _check_kind(kind)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{kind}-{suffix or secrets.token_hex(4)[:7]}"


def case_id(params: Mapping[str, Any]) -> str:
    """A stable id from a case's parameters: `batch=1;model=270m;norm=naive` (sorted keys)."""
    parts = []
    for key in sorted(params):
        value = params[key]
        plain = (
            isinstance(value, str) and value and all(c.isalnum() or c in "_.:/+-" for c in value)
        )
        text = value if plain else json.dumps(value, sort_keys=True, separators=(",", ":"))
        parts.append(f"{key}={text}")
    return ";".join(parts)


def case_record(
    params: Mapping[str, Any], status: str = "ok", reason: str | None = None, **fields: Any
) -> Record:
    """A record: case id, status, reason, the parameters (named in `case_keys`), then `fields`."""
    clash = sorted((set(fields) & set(params)) | ((set(fields) | set(params)) & set(_RESERVED)))
    if clash:
        raise ConfigError(f"record keys clash (with a case parameter or a reserved key): {clash}")
    record: Record = {"case_id": case_id(params), "status": status}
    if reason is not None:
        record["reason"] = reason
    return {**record, "case_keys": sorted(params), **params, **fields}


def final_records(records: Iterable[Record]) -> list[Record]:
    """The last record of each case id, in first-seen order (a retried case appears twice)."""
    last: dict[str, Record] = {}
    for record in records:
        last[record["case_id"]] = record
    return list(last.values())


class RunWriter:
    """Appends records to one run folder; knows which cases are already done."""

    def __init__(self, path: Path, meta: Record, records: list[Record], retry_failed: bool) -> None:
        self.path = path
        self.meta = meta
        self.run_id: str = meta["run_id"]
        self.notes: list[str] = list(meta.get("read_notes", []))
        self._done_statuses = ("ok", "skipped") if retry_failed else STATUSES
        self._done = {r["case_id"] for r in records if r.get("status") in self._done_statuses}
        self.records_path = path / RECORDS_FILE

    def done(self, case_id: str) -> bool:
        """Whether the case already has a finished record (failed ones too, unless retried)."""
        return case_id in self._done

    def append(self, record: Mapping[str, Any]) -> Record:
        """Validate, write one line, flush and fsync; returns the record as written."""
        line = _validated(record, self.run_id)
        with self.records_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if line["status"] in self._done_statuses:
            self._done.add(line["case_id"])
        return line

    def finish(self) -> None:
        """Mark the run finished in run.json (an interrupted run has no `finished_utc`)."""
        self.meta["finished_utc"] = utc_now()
        _write_json(self.path / RUN_FILE, _stored_meta(self.meta))


def open_run(
    kind: str | None = None,
    *,
    spec: Mapping[str, Any] | None = None,
    seed: int | None = None,
    device: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    retry_failed: bool = False,
) -> RunWriter:
    """Create a run folder (under `root`, or exactly `run_dir`) and write run.json, or `resume` one.

    Resuming checks that kind, spec and seed (when given) match the stored run, repairs a
    truncated last line left by a crash (kept aside in records.jsonl.truncated), and notes it.
    """
    if resume is not None:
        return _resume(Path(resume), root, kind, spec, seed, retry_failed)
    if kind is None:
        raise ConfigError(f"a new run needs a kind: one of {', '.join(RUN_KINDS)}")
    _check_kind(kind)
    git = git_state()
    path = _make_run_dir(kind, root, run_dir, git["git_sha"])
    meta: Record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": path.name,
        "kind": kind,
        "created_utc": utc_now(),
        "elmbench_version": __version__,
        **git,
        "versions": versions(),
        "host": host(),
        "argv": list(sys.argv),
        "spec": _clean(dict(spec or {}), "spec", []),
        "seed": seed,
        "device": _clean(dict(device), "device", []) if device is not None else None,
        "resumed": [],
        "finished_utc": None,
    }
    clash = sorted(set(extra or {}) & set(meta))
    if clash:
        raise ConfigError(f"run.json extra keys clash with standard keys: {clash}")
    meta.update(_clean(dict(extra or {}), "extra", []))
    _write_json(path / RUN_FILE, meta)
    (path / RECORDS_FILE).touch()
    return RunWriter(path, meta, [], retry_failed)


def read_run(path: str | Path) -> tuple[Record, list[Record]]:
    """(run.json contents, records in file order); `meta["read_notes"]` lists what was skipped."""
    run = _run_folder(Path(path))
    meta = _read_meta(run)
    records, notes, _ = _read_records(run / RECORDS_FILE)
    meta["read_notes"] = notes
    return meta, records


def git_state(package_dir: Path | None = None) -> dict[str, Any]:
    """{'git_sha', 'git_dirty'} of the elmbench checkout; both None when not a checkout."""
    here = (package_dir or Path(__file__).parent).resolve()
    top_and_head = _git(here, "rev-parse", "--show-toplevel", "HEAD")
    if top_and_head is None or len(top_and_head.split()) != 2:
        return {"git_sha": None, "git_dirty": None}
    top, sha = top_and_head.split()
    if Path(top).resolve() / here.name != here:  # elmbench installed inside some other repo
        return {"git_sha": None, "git_dirty": None}
    # --no-optional-locks: never take the index lock another git process may need.
    status = _git(here, "--no-optional-locks", "status", "--porcelain", "--untracked-files=normal")
    if status is None:
        return {"git_sha": sha, "git_dirty": None}
    changed = [
        ln for ln in status.splitlines() if not ln.startswith("??") or f" {here.name}/" in ln
    ]
    return {"git_sha": sha, "git_dirty": bool(changed)}


def versions() -> dict[str, str | None]:
    """Python and package versions, from metadata (no heavy imports); CUDA when torch is loaded."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("numpy", "torch", "mlx", "mlx-lm", "transformers", "lm-eval"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    return out


def host() -> dict[str, Any]:
    """Hostname, platform, CPU model and core counts."""
    from elmbench.devices import cpu_model

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
    }


def _check_kind(kind: str) -> None:
    if kind not in RUN_KINDS:
        raise UnknownNameError("run kind", kind, RUN_KINDS)


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _make_run_dir(
    kind: str, root: str | Path | None, run_dir: str | Path | None, sha: str | None
) -> Path:
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ElmbenchError(
                f"{path} already exists and is not empty; a run folder is never overwritten: "
                "choose another folder, or resume that run"
            )
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = reports_root(root)
    base.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id(kind, suffix=sha[:7] if sha else None)
    for attempt in range(1, 1000):  # a second run in the same second (and checkout) gets -2, -3..
        path = base / (run_id if attempt == 1 else f"{run_id}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ElmbenchError(f"{base}: could not find a free run folder name for {run_id}")


def _resume(
    path: Path,
    root: str | Path | None,
    kind: str | None,
    spec: Mapping[str, Any] | None,
    seed: int | None,
    retry_failed: bool,
) -> RunWriter:
    if not path.exists() and not path.is_absolute() and (reports_root(root) / path).exists():
        path = reports_root(root) / path  # --resume RUN_ID
    run = _run_folder(path)
    meta = _read_meta(run)
    if kind is not None and meta.get("kind") != kind:
        raise ElmbenchError(f"{run}: cannot resume a '{meta.get('kind')}' run as '{kind}'")
    if spec is not None and _clean(dict(spec), "spec", []) != meta.get("spec"):
        stored = meta.get("spec") or {}
        keys = sorted(k for k in {*spec, *stored} if stored.get(k) != _clean(spec.get(k), k, []))
        raise ElmbenchError(
            f"{run}: the run was started with other settings (differing: {', '.join(keys)}); "
            "resume it with the same settings, or start a new run"
        )
    if seed is not None and meta.get("seed") != seed:
        raise ElmbenchError(f"{run}: the run used seed {meta.get('seed')}, not {seed}")
    records, notes, fragment = _read_records(run / RECORDS_FILE)
    _repair(run / RECORDS_FILE, fragment, notes)
    meta["resumed"] = [*meta.get("resumed", []), {"time_utc": utc_now(), "notes": notes}]
    meta["finished_utc"] = None
    _write_json(run / RUN_FILE, meta)
    meta["read_notes"] = notes
    return RunWriter(run, meta, records, retry_failed)


def _repair(records_path: Path, fragment: tuple[int, bytes] | None, notes: list[str]) -> None:
    """Cut a partial last line (kept in TRUNCATED_FILE), or end a complete one with a newline."""
    if not records_path.exists():
        records_path.touch()
        return
    if fragment is not None:
        offset, data = fragment
        with (records_path.parent / TRUNCATED_FILE).open("ab") as kept:
            kept.write(data + b"\n")
            kept.flush()
            os.fsync(kept.fileno())
        with records_path.open("r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        notes.append(
            f"removed the partial last line; its {len(data)} bytes are in {TRUNCATED_FILE}"
        )
        return
    size = records_path.stat().st_size
    if size:
        with records_path.open("rb") as f:
            f.seek(size - 1)
            last = f.read(1)
        if last != b"\n":
            with records_path.open("ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())


def _run_folder(path: Path) -> Path:
    if path.is_file() and path.name in (RUN_FILE, RECORDS_FILE):
        path = path.parent
    if not path.exists():
        raise ElmbenchError(f"{path}: no such run folder")
    if not (path / RUN_FILE).is_file():
        runs = sorted(p.name for p in path.glob(f"*/{RUN_FILE}")) if path.is_dir() else []
        hint = f"; it holds {len(runs)} run folder(s), pass one of them" if runs else ""
        raise ElmbenchError(
            f"{path} is not an elmbench run folder (a run folder holds {RUN_FILE} and "
            f"{RECORDS_FILE}){hint}"
        )
    return path


def _check_schema(where: str, version: object) -> None:
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = ", ".join(map(str, SUPPORTED_SCHEMA_VERSIONS))
        raise ElmbenchError(
            f"{where}: schema_version {version!r} is not supported by elmbench {__version__} "
            f"(supported: {supported}); use the elmbench version that wrote it"
        )


def _read_meta(run: Path) -> Record:
    path = run / RUN_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ElmbenchError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ElmbenchError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    _check_schema(str(path), meta.get("schema_version"))
    return meta


def _read_records(path: Path) -> tuple[list[Record], list[str], tuple[int, bytes] | None]:
    """Records, notes, and (offset, bytes) of a partial last line left by a crash, if any."""
    if not path.exists():
        return [], [f"{path.name} is missing: the run has no records yet"], None
    data = path.read_bytes()
    records: list[Record] = []
    notes: list[str] = []
    offset = 0
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        start, offset = offset, offset + len(raw) + 1
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if number == len(lines):  # no newline after it: a write cut short by a crash
                notes.append(f"{path.name}:{number}: ignored a truncated last line (a crash)")
                return records, notes, (start, raw)
            raise ElmbenchError(f"{path}:{number}: not a JSON record ({exc})") from None
        if not isinstance(record, dict):
            raise ElmbenchError(f"{path}:{number}: expected a JSON object")
        _check_schema(f"{path}:{number}", record.get("schema_version"))
        records.append(record)
    return records, notes, None


def _validated(record: Mapping[str, Any], run_id: str) -> Record:
    for key in ("case_id", "status"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise ConfigError(f"a record needs a non-empty string '{key}'")
    status = record["status"]
    if status not in STATUSES:
        raise ConfigError(f"record status '{status}': allowed: {', '.join(STATUSES)}")
    if status != "ok" and not record.get("reason"):
        raise ConfigError(f"a '{status}' record needs a reason (case {record['case_id']})")
    if record.get("run_id", run_id) != run_id:
        raise ConfigError(f"record run_id {record['run_id']!r} is not this run's ({run_id})")
    bad: list[str] = []
    body = _clean(dict(record), "", bad)
    line = {"schema_version": SCHEMA_VERSION, "run_id": run_id, "case_id": record["case_id"]}
    line.update(body)
    line["schema_version"] = SCHEMA_VERSION
    if bad:
        line["non_finite"] = bad  # NaN/inf are stored as null and named here
    return line


def _clean(value: Any, where: str, bad: list[str]) -> Any:
    """A JSON-safe copy: numpy values as lists/scalars, paths as str, non-finite floats as None."""
    if isinstance(value, Mapping):
        return {
            str(k): _clean(v, f"{where}.{k}" if where else str(k), bad) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{where}[{i}]", bad) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(where)
        return None
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _clean(value.tolist(), where, bad)
    raise ConfigError(f"value at '{where}' of type {type(value).__name__} is not JSON-safe")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically: a temporary file, fsync, rename over, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _stored_meta(meta: Mapping[str, Any]) -> Record:
    return {k: v for k, v in meta.items() if k != "read_notes"}
