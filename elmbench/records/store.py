"""Run folders: `run.json` (who, what, where) and append-only `records.jsonl` of typed records.

A case's records are written as one group in one write, flushed and fsynced at once; a run folder
is locked while a process writes it and is never overwritten; a resumed run skips the cases it has
and drops a group that a crash cut short; readers refuse unknown schema versions.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from elmbench import __version__
from elmbench.errors import ConfigError, ElmbenchError, UnknownNameError
from elmbench.records.codec import from_json, to_json
from elmbench.records.types import (
    KINDS,
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    FailureRecord,
    Record,
)

RUN_KINDS = ("throughput", "profile", "accuracy")
STATUSES = ("ok", "failed", "skipped")
RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
TRUNCATED_FILE = "records.jsonl.truncated"  # where resume keeps what a crash cut short
LOCK_FILE = ".lock"
ENV_REPORTS = "ELMBENCH_REPORTS"
DEFAULT_ROOT = "runs"  # git-ignored; curated runs are copied to reports/ by hand
_ENVELOPE = ("schema_version", "kind", "run_id", "case_id", "group", "group_size", "non_finite")


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def reports_root(root: str | Path | None = None) -> Path:
    """Where new run folders go: `root` if given, else $ELMBENCH_REPORTS, else ./runs."""
    return Path(root or os.environ.get(ENV_REPORTS) or DEFAULT_ROOT)


def new_run_id(kind: str, now: datetime | None = None, suffix: str | None = None) -> str:
    """`20261123-061502-throughput-<short git sha, or random hex>` (UTC time)."""
    _check_kind(kind)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{kind}-{suffix or secrets.token_hex(4)[:7]}"


def run_path(ref: str | Path, root: str | Path | None = None) -> Path:
    """A run folder given as a path, or as a run id under the run root (`--out`)."""
    path = Path(ref)
    if path.is_file() and path.name in (RUN_FILE, RECORDS_FILE):
        path = path.parent
    if not path.exists() and not path.is_absolute() and (reports_root(root) / path).exists():
        return reports_root(root) / path
    return path


def check_writable(root: str | Path | None) -> Path:
    """The run root, checked before any work: a folder this process can create and write in."""
    base = reports_root(root)
    probe = base
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if base.exists() and not base.is_dir():
        raise ElmbenchError(f"--out {base} is a file, not a folder; give a folder for run folders")
    if not probe.is_dir():
        raise ElmbenchError(f"--out {base}: {probe} is not a folder; give a folder for run folders")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ElmbenchError(
            f"--out {base}: {probe} is not writable by this user; give a folder you can write in"
        )
    try:  # permissions do not tell all (a read-only file system, root's access): try it
        os.rmdir(tempfile.mkdtemp(prefix=".elmbench-check-", dir=probe))
    except OSError as exc:
        raise ElmbenchError(
            f"--out {base}: cannot write in {probe} ({exc.strerror or exc}); give a folder you can "
            "write in"
        ) from None
    return base


@dataclass
class RunMeta:
    """`run.json`: versions, host, git state, the options as `spec`, the seed and the device."""

    run_id: str
    kind: str
    created_utc: str
    elmbench_version: str
    git_sha: str | None
    git_dirty: bool | None
    versions: dict[str, Any]
    host: dict[str, Any]
    argv: tuple[str, ...]
    spec: dict[str, Any]
    seed: int | None = None
    device: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific: membw, plan notes...
    resumed: tuple[dict[str, Any], ...] = ()
    finished_utc: str | None = None
    schema_version: int = SCHEMA_VERSION


@dataclass
class Run:
    """A run read back: its metadata, its records (the last of each case) and what was skipped."""

    path: Path
    meta: RunMeta
    records: list[Record]
    notes: list[str] = field(default_factory=list)

    def of(self, kind: type[Any]) -> list[Any]:
        """The records of one kind."""
        return [r for r in self.records if isinstance(r, kind)]


class RunWriter:
    """Appends records to one run folder it holds locked; knows which cases are already done."""

    def __init__(
        self,
        path: Path,
        meta: RunMeta,
        records: Sequence[Record],
        retry_failed: bool,
        lock: IO[str],
        notes: Sequence[str] = (),
    ) -> None:
        self.path = path
        self.meta = meta
        self.run_id = meta.run_id
        self.notes = list(notes)
        self._lock = lock
        self._retry_failed = retry_failed
        self._have = {r.case_id: r.status for r in records}
        self.records_path = path / RECORDS_FILE

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done(self, case_id: str) -> bool:
        """Whether the case already has a record (a failed one too, unless failures are retried)."""
        status = self._have.get(case_id)
        if status is None:
            return False
        return not (self._retry_failed and status == "failed")

    def append(self, *records: Record) -> list[dict[str, Any]]:
        """Write one case's records as one group: one write, flushed and fsynced.

        A record for a case that already has one (a retried failure) replaces it in the file.
        """
        if not records:
            return []
        group = records[0].case_id
        lines = [self._line(r, group, len(records)) for r in records]
        replaced = {r.case_id for r in records} & set(self._have)
        if replaced:
            _rewrite_without(self.records_path, replaced)
        with self.records_path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(line, allow_nan=False) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        for record in records:
            self._have[record.case_id] = record.status
        return lines

    def _line(self, record: Record, group: str, size: int) -> dict[str, Any]:
        if record.status not in STATUSES:
            raise ConfigError(f"record status '{record.status}': allowed: {', '.join(STATUSES)}")
        if isinstance(record, FailureRecord) and not record.reason:
            raise ConfigError(f"a '{record.status}' record needs a reason ({record.case_id})")
        bad: list[str] = []
        body = to_json(record, "", bad)
        line = {
            "schema_version": SCHEMA_VERSION,
            "kind": record.KIND,
            "run_id": self.run_id,
            "case_id": record.case_id,
            "group": group,
            "group_size": size,
            **body,
        }
        if bad:
            line["non_finite"] = bad  # NaN/inf are stored as null and named here
        return line

    def finish(self) -> None:
        """Mark the run finished in run.json (an interrupted run has no `finished_utc`)."""
        self.meta.finished_utc = utc_now()
        _write_meta(self.path, self.meta)

    def close(self) -> None:
        """Release the run folder's lock."""
        if not self._lock.closed:
            self._lock.close()


def open_run(
    kind: str,
    *,
    spec: Mapping[str, Any],
    seed: int | None = None,
    device: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    run_dir: str | Path | None = None,
) -> RunWriter:
    """Create a run folder (under `root`, or exactly `run_dir`), write run.json and lock it."""
    _check_kind(kind)
    git = git_state()
    path = _make_run_dir(kind, root, run_dir, git["git_sha"])
    meta = RunMeta(
        run_id=path.name,
        kind=kind,
        created_utc=utc_now(),
        elmbench_version=__version__,
        git_sha=git["git_sha"],
        git_dirty=git["git_dirty"],
        versions=versions(),
        host=host(),
        argv=tuple(sys.argv),
        spec=to_json(dict(spec), "spec", []),
        seed=seed,
        device=None if device is None else to_json(dict(device), "device", []),
        extra=to_json(dict(extra or {}), "extra", []),
    )
    lock = _lock(path)
    _write_meta(path, meta)
    (path / RECORDS_FILE).touch()
    return RunWriter(path, meta, [], retry_failed=False, lock=lock)


def resume_run(
    ref: str | Path,
    *,
    kind: str,
    spec: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    retry_failed: bool = False,
) -> RunWriter:
    """Reopen a run to finish it: same kind and settings, a crash's partial group set aside."""
    path = _run_folder(run_path(ref, root))
    meta = _read_meta(path)
    if meta.kind != kind:
        raise ElmbenchError(f"{path}: cannot resume a '{meta.kind}' run as '{kind}'")
    if spec is not None:
        differing = differing_settings(meta.spec, spec)
        if differing:
            raise ElmbenchError(
                f"{path}: the run was started with other settings (differing: "
                f"{', '.join(differing)}); resume it without them, or start a new run"
            )
    lock = _lock(path)
    try:
        records, notes, cut = _read_records(path / RECORDS_FILE)
        _repair(path / RECORDS_FILE, cut, notes)
    except BaseException:
        lock.close()
        raise
    meta.resumed = (*meta.resumed, {"time_utc": utc_now(), "notes": notes})
    meta.finished_utc = None
    _write_meta(path, meta)
    return RunWriter(path, meta, _final(records), retry_failed, lock, notes)


def differing_settings(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """The keys of `given` whose values differ from the stored run's settings."""
    clean = to_json(dict(given), "spec", [])
    return sorted(k for k in clean if stored.get(k) != clean[k])


def read_run(ref: str | Path, root: str | Path | None = None) -> Run:
    """A run folder's metadata and records (the last record of each case), read and checked."""
    path = _run_folder(run_path(ref, root))
    meta = _read_meta(path)
    records, notes, _ = _read_records(path / RECORDS_FILE)
    return Run(path, meta, _final(records), notes)


def parse_record(data: Mapping[str, Any], where: str) -> Record:
    """A typed record from one JSON line (the envelope checked, the kind's fields typed)."""
    _check_schema(where, data.get("schema_version"))
    kind = data.get("kind")
    if kind not in KINDS:
        raise ElmbenchError(f"{where}: unknown record kind {kind!r}; kinds: {', '.join(KINDS)}")
    body = {k: v for k, v in data.items() if k not in _ENVELOPE}
    record: Record = from_json(KINDS[kind], body, where)
    return record


def git_state(package_dir: Path | None = None) -> dict[str, Any]:
    """{'git_sha', 'git_dirty'} of the elmbench checkout; both None when not a checkout."""
    here = (package_dir or Path(__file__).parent.parent).resolve()
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
    for dist in ("numpy", "torch", "mlx", "mlx-lm", "transformers", "lm-eval", "triton"):
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
    try:
        if run_dir is not None:
            path = Path(run_dir)
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise ElmbenchError(
                    f"{path} already exists and is not empty; a run folder is never "
                    "overwritten: choose another folder, or resume that run"
                )
            path.mkdir(parents=True, exist_ok=True)
            return path
        base = check_writable(root)
        base.mkdir(parents=True, exist_ok=True)
        run_id = new_run_id(kind, suffix=sha[:7] if sha else None)
        for attempt in range(1, 1000):  # a second run in the same second gets -2, -3..
            path = base / (run_id if attempt == 1 else f"{run_id}-{attempt}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except OSError as exc:
        raise ElmbenchError(
            f"cannot create a run folder under {reports_root(root)}: {exc.strerror or exc}; "
            "give --out a folder you can write in"
        ) from None
    raise ElmbenchError(f"{base}: could not find a free run folder name for {run_id}")


def _lock(path: Path) -> IO[str]:
    """Hold the run folder's lock for this process; a second writer gets one clear line."""
    handle = (path / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as on file systems without one
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ElmbenchError(
            f"{path} is being written by {holder}; wait for it to finish (a run folder has one "
            "writer at a time)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"elmbench pid {os.getpid()} on {socket.gethostname()} since {utc_now()}\n")
    handle.flush()
    return handle


def _final(records: Iterable[Record]) -> list[Record]:
    """The last record of each case id, in first-seen order."""
    last: dict[str, Record] = {}
    for record in records:
        last[record.case_id] = record
    return list(last.values())


def _repair(records_path: Path, cut: int | None, notes: list[str]) -> None:
    """Set aside what follows offset `cut` (a crash's partial group), or end the last line."""
    if not records_path.exists():
        records_path.touch()
        return
    if cut is not None:
        with records_path.open("r+b") as f:
            f.seek(cut)
            data = f.read()
            with (records_path.parent / TRUNCATED_FILE).open("ab") as kept:
                kept.write(data if data.endswith(b"\n") else data + b"\n")
                kept.flush()
                os.fsync(kept.fileno())
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        notes.append(f"set aside {len(data)} bytes a crash cut short; they are in {TRUNCATED_FILE}")
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


def _rewrite_without(records_path: Path, case_ids: set[str]) -> None:
    """Rewrite records.jsonl atomically without the lines of `case_ids` (replaced records)."""
    kept = [
        line
        for line in records_path.read_bytes().splitlines(keepends=True)
        if line.strip() and json.loads(line).get("case_id") not in case_ids
    ]
    tmp = records_path.with_name(f".{records_path.name}.tmp")
    with tmp.open("wb") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, records_path)
    _fsync_dir(records_path.parent)


def _run_folder(path: Path) -> Path:
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
            f"(supported: {supported}); read it with the elmbench version that wrote it "
            "(docs/records.md)"
        )


def _read_meta(run: Path) -> RunMeta:
    path = run / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ElmbenchError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ElmbenchError(f"{path}: expected a JSON object, found {type(data).__name__}")
    _check_schema(str(path), data.get("schema_version"))
    meta: RunMeta = from_json(RunMeta, data, str(path))
    return meta


def _read_records(path: Path) -> tuple[list[Record], list[str], int | None]:
    """Records, notes, and the offset where a crash's partial last group starts (None if whole).

    A line that does not parse is a crash's cut only when it is the file's last; elsewhere it is
    corruption and an error. A group (a case's records, written together) that ends short at the
    end of the file is a crash's cut too.
    """
    if not path.exists():
        return [], [f"{path.name} is missing: the run has no records yet"], None
    data = path.read_bytes()
    records: list[Record] = []
    notes: list[str] = []
    offset = 0
    lines = data.split(b"\n")
    group: tuple[Any, int, int, int] | None = None  # (id, size, lines seen, start offset)
    for number, raw in enumerate(lines, start=1):
        start, offset = offset, offset + len(raw) + 1
        if not raw.strip():
            continue
        try:
            line = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if number == len(lines):  # no newline after it: a write cut short by a crash
                notes.append(f"{path.name}:{number}: ignored a truncated last line (a crash)")
                cut = group[3] if group is not None and group[2] < group[1] else start
                kept = len(records) - (group[2] if cut != start and group else 0)
                return records[:kept], notes, cut
            raise ElmbenchError(f"{path}:{number}: not a JSON record ({exc})") from None
        if not isinstance(line, dict):
            raise ElmbenchError(f"{path}:{number}: expected a JSON object")
        records.append(parse_record(line, f"{path}:{number}"))
        gid, size = line.get("group"), line.get("group_size") or 1
        if group is not None and group[0] == gid and group[2] < group[1]:
            group = (group[0], group[1], group[2] + 1, group[3])
        else:
            group = (gid, size, 1, start)
    if group is not None and group[2] < group[1]:  # the last case's group ends short
        notes.append(
            f"{path.name}: the last case has {group[2]} of its {group[1]} records (a crash); "
            "it is measured again on resume"
        )
        return records[: len(records) - group[2]], notes, group[3]
    return records, notes, None


def _write_meta(run: Path, meta: RunMeta) -> None:
    """Write run.json atomically: a temporary file, fsync, rename over, fsync the folder."""
    path = run / RUN_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(to_json(meta, "", []), f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(run)


def _fsync_dir(folder: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
