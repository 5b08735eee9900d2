"""`elmbench accuracy`: the paper's lm-eval suites, one record per task and metric, resumable.

Each task is one `run_accuracy` call, so its records (with its evaluation speed) are appended as
soon as it finishes and a resumed run skips the tasks it already has.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from elmbench.cli.options import Column, emit, format_option, model_option
from elmbench.errors import ElmbenchError

if TYPE_CHECKING:
    from elmbench.accuracy.runner import AccuracyPlan
    from elmbench.accuracy.suites import AccuracySuite, AccuracyTask
    from elmbench.records import RunWriter

Record = dict[str, Any]
DTYPES = ("float32", "bfloat16", "float16")
CACHE_DIR = "lm_eval_cache"  # lm-eval's request cache inside the run folder, for --resume
# Options a resumed run takes from its run.json when they are not given again.
RESUMABLE = (
    "model", "weights", "suite", "tasks", "limit", "batch_size", "device", "backend", "dtype",
    "norm", "tokenizer", "data_dir", "allow_random", "seed", "share_prefix",
)  # fmt: skip
_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class EvalSpeed:
    """Requests the adapter answered, forward passes it ran, their tokens and seconds spent."""

    requests: int = 0
    forwards: int = 0
    input_tokens: int = 0  # tokens of the distinct inputs scored, each counted whole
    computed_tokens: int = 0  # tokens run through the model: shared prefixes once, no padding
    padded_tokens: int = 0  # with padding: what the batches computed
    seconds: float = 0.0

    @property
    def requests_per_s(self) -> float | None:
        """Answered requests per second of adapter time (None when nothing was computed)."""
        return self.requests / self.seconds if self.requests and self.seconds > 0 else None

    @property
    def tokens_per_s(self) -> float | None:
        """Input tokens scored per second of adapter time: comparable across tokenizers."""
        return self.input_tokens / self.seconds if self.input_tokens and self.seconds > 0 else None


# The adapter's counters EvalSpeed sums.
COUNTED = ("forwards", "input_tokens", "computed_tokens", "padded_tokens")


def measured_adapter(speed: EvalSpeed) -> type:
    """An ElmLM subclass that counts and times the requests it answers into `speed`.

    Time is measured around lm-eval's calls into the model, so task loading and metric
    computation are left out; requests served from lm-eval's cache (on resume) never reach it.
    """
    from elmbench.accuracy import adapter

    class MeasuredLM(adapter.ElmLM):
        def _timed(self, n: int, call: Callable[..., Any], *args: Any) -> Any:
            before = {name: getattr(self, name) for name in COUNTED}
            start = time.perf_counter()
            try:
                return call(*args)
            finally:
                speed.seconds += time.perf_counter() - start
                speed.requests += n
                for name, count in before.items():
                    setattr(speed, name, getattr(speed, name) + getattr(self, name) - count)

        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return self._timed(len(requests), super().loglikelihood, requests, disable_tqdm)

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return self._timed(len(requests), super().loglikelihood_rolling, requests, disable_tqdm)

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return self._timed(len(requests), super().generate_until, requests, disable_tqdm)

    return MeasuredLM


# Checks of user input, all before a run folder is made -----------------------------------------


class BatchSize(click.ParamType):
    """A positive number of rows, or 'auto'."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """'auto' as is; a number as an int of at least 1; anything else a usage error."""
        if isinstance(value, int) or str(value).strip().lower() != "auto":
            try:
                number = int(value)
            except (TypeError, ValueError):
                number = 0
            if number < 1:
                self.fail(f"'{value}' is not a positive number or 'auto'", param, ctx)
            return number
        return "auto"


def load_accuracy_suite(name: str) -> AccuracySuite:
    """An accuracy suite by name (zero_shot, openllm, llm360) or YAML path."""
    from elmbench.accuracy.suites import AccuracySuite
    from elmbench.suites import list_suites, load_suite, suite_path

    suite = load_suite(suite_path(name))
    if not isinstance(suite, AccuracySuite):
        accuracy = [p.stem for p in list_suites() if "kind: accuracy" in p.read_text()]
        raise ElmbenchError(
            f"suite '{name}' is a {suite.kind} suite, not an accuracy suite; accuracy suites: "
            f"{', '.join(accuracy)}"
        )
    return suite


def weights_path(weights: str | None) -> str | None:
    """A local weights path as given, or a Hugging Face id fetched to the local cache."""
    if weights is None or Path(weights).expanduser().exists():
        return None if weights is None else str(Path(weights).expanduser())
    if weights.startswith((".", "/", "~")) or not _HF_ID.fullmatch(weights):
        raise ElmbenchError(
            f"weights path '{weights}' does not exist; give an HF folder, a CoreNet .pt file, an "
            "MLX folder or a Hugging Face id such as apple/OpenELM-1_1B"
        )
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return str(
            snapshot_download(
                weights, allow_patterns=["*.json", "*.safetensors"], local_files_only=offline
            )
        )
    except Exception as exc:  # hub errors have many types; all mean "not available here"
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ElmbenchError(
            f"weights '{weights}' cannot be had from the Hugging Face Hub ({first}); "
            "give --weights PATH to a local checkpoint"
        ) from None


def check_task_data(tasks: Sequence[AccuracyTask], data: Path | None) -> None:
    """Every task's local files exist (offline), or the Hub may be used (online)."""
    from elmbench.accuracy.taskdata import expand_tasks, local_task

    if data is None:
        if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ElmbenchError(
                "the Hugging Face Hub is offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE) and no task "
                "data folder is given: use --data-dir DIR or set ELMBENCH_DATA"
            )
        return
    for task in tasks:
        for name in expand_tasks([task.task], data):
            for rel in local_task(name).files.values():
                if not (data / rel).is_file():
                    raise ElmbenchError(f"task '{name}' has no local data: expected {data / rel}")


def task_case(task: AccuracyTask, metric: str, norm: str) -> dict[str, str]:
    """The parameters that identify one record of a run."""
    return {"task": task.task, "metric": metric, "norm": norm}


# Output --------------------------------------------------------------------------------------

SPEED_COLUMNS = [
    Column.key("norm", "norm", group=True),
    Column.key("task", "label"),
    Column.key("shots", "shots", numeric=True),
    Column.key("docs", "samples", numeric=True),
    Column.key("requests", "requests", numeric=True),
    Column.key("forwards", "forwards", numeric=True),
    Column("computed", lambda r: _share(r), numeric=True),
    Column("eval s", lambda r: _num(r.get("eval_s"), 2), numeric=True),
    Column("requests/s", lambda r: _num(r.get("requests_per_s"), 2), numeric=True),
    Column("tokens/s", lambda r: _num(r.get("input_tokens_per_s"), 0), numeric=True),
    Column("wall s", lambda r: _num(r.get("wall_s"), 1), numeric=True),
]


def _share(record: Record) -> str:
    """Tokens computed as a share of the inputs' tokens (below 100% where prefixes were shared)."""
    done, whole = record.get("computed_tokens"), record.get("input_tokens")
    return f"{100 * done / whole:.0f}%" if isinstance(done, int) and whole else "-"


def _num(value: Any, digits: int) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "-"


def _report(records: list[Record], suite: AccuracySuite, fmt: str, run_dir: Path) -> None:
    """The summary table per norm variant, whether the variants agree, and the speed per task."""
    from elmbench.accuracy.summary import norms_agree, summary_table

    norms = list(dict.fromkeys(r["norm"] for r in records))
    summaries = {n: summary_table(records, n, suite) for n in norms}  # (header, rows, notes)
    agreement = []
    if len(norms) > 1:
        agree, gap, names = norms_agree(records)
        agreement.append(
            f"norm variants {', '.join(names)} {'agree' if agree else 'DISAGREE'}: largest gap "
            f"{gap:.2f} points ({'within' if agree else 'beyond'} the tasks' standard errors)"
        )
    first = {(r["norm"], r["label"]): r for r in reversed(records)}  # one row per task
    speed = [first[key] for key in dict.fromkeys((r["norm"], r["label"]) for r in records)]
    if fmt == "json":
        tables = {n: {"header": h, "rows": rs, "notes": ns} for n, (h, rs, ns) in summaries.items()}
        data = {"run_dir": str(run_dir), "suite": suite.name, "summaries": tables,
                "norms_agree": agreement[0] if agreement else None, "records": records}  # fmt: skip
        emit([], [], fmt, data=data)
        return
    if fmt == "csv":
        table = [
            {"norm": norm, "row": row[0], **dict(zip(header[1:], row[1:], strict=True))}
            for norm, (header, rows, _) in summaries.items()
            for row in rows
        ]
        emit(table, [], fmt)
        return
    for norm, (header, rows, notes) in summaries.items():
        columns = [Column.key(h, str(i), numeric=i > 0) for i, h in enumerate(header)]
        table = [{str(i): cell for i, cell in enumerate(row)} for row in rows]
        title = f"{suite.name}: {suite.description} (norm {norm})"
        emit(table, columns, fmt, title=title, notes=[*notes, *agreement])
        click.echo()
    legend = [
        "requests: lm-eval requests the model answered in this process (cached ones excluded); "
        "requests/s over the time spent in the model adapter; wall s also includes loading the "
        "model and the task",
        "computed: tokens run through the model against the tokens of the inputs scored whole "
        "(each document's shared prefix is computed once; --no-share-prefix: 100%)",
        f"records: {run_dir}",
    ]
    emit(speed, SPEED_COLUMNS, fmt, title="Evaluation speed", notes=legend)


# The command ---------------------------------------------------------------------------------


@click.command()
@model_option(default=None)
@click.option(
    "--weights", metavar="PATH", help="HF folder, CoreNet .pt, MLX folder, or a Hugging Face id."
)
@click.option(
    "--suite",
    default="zero_shot",
    show_default=True,
    help="zero_shot, openllm, llm360, or a suite YAML path.",
)
@click.option(
    "--tasks", help="Comma-separated task labels (ARC-c) or lm-eval names (arc_challenge)."
)
@click.option("--limit", type=click.IntRange(min=1), help="Documents per task, for quick runs.")
@click.option(
    "--batch-size",
    type=BatchSize(),
    default="1",
    show_default=True,
    help="Rows per forward pass (the paper used 1; results are the same), or 'auto': on a GPU "
    "the largest batch that fits, on a CPU a measured token budget per forward.",
)
@click.option(
    "--share-prefix/--no-share-prefix",
    default=True,
    show_default=True,
    help="Score a document's choices in one row, their shared prefix once; off: each whole.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu, mlx-cpu, cuda[:N], mps, mlx-gpu or a device profile.",
)
@click.option(
    "--backend",
    type=click.Choice(["torch", "mlx"], case_sensitive=False),
    help="Framework; default: the one of --device.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="float32",
    show_default=True,
    help="Weights and activations.",
)
@click.option(
    "--norm",
    default="naive",
    show_default=True,
    help="RMSNorm variant(s), comma-separated; several are checked for agreement.",
)
@click.option(
    "--tokenizer",
    metavar="PATH",
    help="LLaMA-2 SentencePiece tokenizer.model, a folder, or a Hugging Face id.",
)
@click.option(
    "--data-dir",
    metavar="DIR",
    help="Task data folder laid out like shared/evaldata (default: $ELMBENCH_DATA, else the Hub).",
)
@click.option("--allow-random", is_flag=True, help="Random weights: tests the pipeline only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random weights.")
@click.option(
    "--out",
    metavar="DIR",
    help="Folder for run folders (default: $ELMBENCH_REPORTS, else reports/).",
)
@click.option("--resume", metavar="RUN", help="Continue an interrupted run (its folder or run id).")
@format_option
@click.pass_context
def accuracy(ctx: click.Context, **opts: Any) -> None:
    """Evaluate accuracy with lm-evaluation-harness, beside the paper's numbers.

    Runs the paper's suites (zero_shot, openllm, llm360) with the same tasks and shots, records
    every task and metric with the published value and the delta, and prints the summary per suite
    and the evaluation speed. Progress goes to stderr. Under `accelerate launch` the evaluation is
    data-parallel and rank 0 writes the records.
    """
    from elmbench.accuracy.papermodel import checkpoint_config, paper_model
    from elmbench.accuracy.runner import AccuracyPlan, init_data_parallel, run_accuracy
    from elmbench.accuracy.taskdata import data_dir
    from elmbench.accuracy.tokenizer import load_tokenizer
    from elmbench.backends import ModelSpec
    from elmbench.devices import resolve_device
    from elmbench.norms import get_norm
    from elmbench.records import case_id, final_records, read_run

    fmt = opts.pop("fmt")
    stored = _stored_options(ctx, opts)
    suite = load_accuracy_suite(opts["suite"])
    names = [n.strip() for n in (opts["tasks"] or "").split(",") if n.strip()]
    tasks: list[AccuracyTask] = [suite.task(n) for n in names] if names else list(suite.tasks)
    if opts["weights"] is None and not opts["allow_random"]:
        raise ElmbenchError(
            "accuracy needs trained weights: give --weights PATH (HF folder, CoreNet .pt or MLX "
            "folder) or a Hugging Face id; --allow-random evaluates random weights, which only "
            "tests the pipeline"
        )
    weights = weights_path(opts["weights"])
    if weights is None and opts["model"] is None:
        opts["model"] = "270m"
    checkpoint = checkpoint_config(weights)
    if checkpoint is not None:  # a --model that is not the checkpoint is refused here, not later
        paper_model(checkpoint, opts["model"])
    data = data_dir(opts["data_dir"])
    check_task_data(tasks, data)
    tokenizer = load_tokenizer(opts["tokenizer"])
    # Paths are stored absolute in run.json, so a run resumes from any folder.
    opts["data_dir"] = None if data is None else str(data)
    opts["weights"] = _absolute(opts["weights"])
    opts["tokenizer"] = _absolute(opts["tokenizer"])
    device = resolve_device(opts["device"], opts["backend"])
    if device.backend == "mlx":
        from elmbench.backends import mlx_blas

        mlx_blas.ensure_in_process()  # may restart this command with OpenBLAS preloaded
    norms = tuple(dict.fromkeys(n.strip() for n in opts["norm"].split(",") if n.strip()))
    for norm in norms:
        get_norm(norm, device.backend)
    spec = ModelSpec(
        model=opts["model"],
        weights=weights,
        norm=norms[0],
        dtype=opts["dtype"],
        seed=opts["seed"],
        device=_rank_device(device.framework_device),
    )
    plan = AccuracyPlan(
        backend=device.backend,
        spec=spec,
        norms=norms,
        tokenizer=opts["tokenizer"],
        data_dir=data,
        limit=opts["limit"],
        batch_size=opts["batch_size"],
        share_prefix=opts["share_prefix"],
        allow_random=opts["allow_random"],
        weights_name=opts["weights"],
    )

    world = init_data_parallel()
    rank = int(os.environ.get("RANK", "0"))
    writer = _open_run(opts, stored, device.to_record(), world, rank)
    run_dir = _shared_run_dir(writer, world)
    done: set[str] = set()
    if writer is None and opts["resume"]:  # other ranks skip what rank 0 skips
        done = {r["case_id"] for r in final_records(read_run(run_dir)[1]) if r["status"] == "ok"}
    plan = replace(plan, cache_dir=run_dir / CACHE_DIR)

    def say(message: str) -> None:
        if rank == 0:
            click.echo(message, err=True)

    say(
        f"accuracy: suite {suite.name}, {len(tasks)} task(s) x {len(norms)} norm(s) on "
        f"{device.backend}/{device.framework_device}, tokenizer {tokenizer.identity}; "
        f"run {run_dir}"
    )
    steps = [(norm, task) for norm in norms for task in tasks]
    for step, (norm, task) in enumerate(steps, start=1):
        where = f"[{step}/{len(steps)}] {task.label} ({task.task}, {task.shots}-shot, norm {norm})"
        ids = [case_id(task_case(task, m, norm)) for m in task.metrics]
        if all((writer.done(i) if writer else i in done) for i in ids):
            say(f"{where}: already in the run, skipped")
            continue
        say(f"{where} ...")
        speed, start = EvalSpeed(), time.perf_counter()
        one = replace(plan, norms=(norm,), tasks=(task.task,))
        records = run_accuracy(suite, one, lm_class=measured_adapter(speed))
        wall = time.perf_counter() - start
        for record in records:
            if writer is not None:
                writer.append(_case(task, record, speed, wall, plan))
        values = ", ".join(f"{r['metric']} {r['value_pct']:.2f}" for r in records)
        rate = "-" if speed.requests_per_s is None else f"{speed.requests_per_s:.2f}"
        say(
            f"{where}: {values}; {speed.requests} requests in {speed.seconds:.1f} s "
            f"({rate} requests/s), {wall:.1f} s in all"
        )
    if writer is None:
        return
    writer.finish()
    records = [r for r in final_records(read_run(writer.path)[1]) if r.get("status") == "ok"]
    _report(records, suite, fmt, writer.path)


def _stored_options(ctx: click.Context, opts: dict[str, Any]) -> dict[str, Any] | None:
    """On --resume: fill options not given again from the run's run.json; returns its spec."""
    if not opts["resume"]:
        return None
    from click.core import ParameterSource

    from elmbench.records import read_run, reports_root

    path = Path(opts["resume"])
    if not path.exists() and (reports_root(opts["out"]) / path).exists():
        path = reports_root(opts["out"]) / path
    meta, _ = read_run(path)
    if meta.get("kind") != "accuracy":
        raise ElmbenchError(f"{path}: cannot resume a '{meta.get('kind')}' run as 'accuracy'")
    spec: dict[str, Any] = meta.get("spec") or {}
    for key in RESUMABLE:
        if key in spec and ctx.get_parameter_source(key) == ParameterSource.DEFAULT:
            opts[key] = spec[key]
    opts["resume"] = str(path)
    return spec


def _rank_device(framework_device: str) -> str:
    """Under `accelerate launch` with several processes, each takes the GPU of its local rank."""
    local = os.environ.get("LOCAL_RANK")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and local is not None and framework_device.startswith("cuda"):
        return f"cuda:{local}"
    return framework_device


def _absolute(value: str | None) -> str | None:
    """An existing local path made absolute; anything else (a Hugging Face id) as given."""
    if value is None or not Path(value).expanduser().exists():
        return value
    return str(Path(value).expanduser().resolve())


def _run_spec(opts: dict[str, Any]) -> dict[str, Any]:
    return {key: opts[key] for key in RESUMABLE}


def _open_run(
    opts: dict[str, Any],
    stored: dict[str, Any] | None,
    device: dict[str, Any],
    world: int,
    rank: int,
) -> RunWriter | None:
    """The run folder on rank 0 (new, or the resumed one); other ranks write nothing."""
    from elmbench.records import open_run

    if rank != 0:
        return None
    if stored is not None:
        return open_run("accuracy", spec=_run_spec(opts), seed=opts["seed"], resume=opts["resume"])
    return open_run(
        "accuracy",
        spec=_run_spec(opts),
        seed=opts["seed"],
        device=device,
        extra={"world_size": world},
        root=opts["out"],
    )


def _shared_run_dir(writer: RunWriter | None, world: int) -> Path:
    """Rank 0's run folder, known to every rank (each keeps its own request cache in it)."""
    path = None if writer is None else str(writer.path)
    if world > 1:
        import torch.distributed as dist

        box = [path]
        dist.broadcast_object_list(box, src=0)
        path = box[0]
    if path is None:
        raise ElmbenchError("rank 0 did not report its run folder")
    return Path(path)


def _case(
    task: AccuracyTask, record: Record, speed: EvalSpeed, wall: float, plan: AccuracyPlan
) -> Record:
    """A runner record as a run record: case parameters, speed of its task and the plan's limit."""
    from elmbench.records import case_record

    params = task_case(task, record["metric"], record["norm"])
    fields = {k: v for k, v in record.items() if k not in params and k != "status"}
    fields.update(
        limit=plan.limit,
        batch_size=plan.batch_size,
        share_prefix=plan.share_prefix,
        requests=speed.requests,
        forwards=speed.forwards,
        input_tokens=speed.input_tokens,
        computed_tokens=speed.computed_tokens,
        padded_tokens=speed.padded_tokens,
        eval_s=speed.seconds,
        requests_per_s=speed.requests_per_s,
        input_tokens_per_s=speed.tokens_per_s,
        wall_s=wall,
    )
    return case_record(params, status=record["status"], **fields)


COMMANDS = [accuracy]
