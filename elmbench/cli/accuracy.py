"""`elmbench accuracy`: the paper's lm-eval suites, one record per task and metric, resumable.

Each task is one `run_accuracy` call, so its records (with its evaluation speed) are appended as
soon as it finishes and a resumed run skips the tasks it already has. Every input is checked
before the run folder is made.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from elmbench.accuracy.inputs import (
    PAPER_TOKENIZER,
    absolute,
    check_task_data,
    check_task_names,
    load_accuracy_suite,
    official_weights,
    weights_path,
)
from elmbench.cli.interrupts import resumable
from elmbench.cli.options import Column, as_json, emit
from elmbench.cli.run_options import (
    OUTPUT,
    SESSION_OPTIONS,
    after_run,
    check_session,
    flag,
    given,
    run_options,
    split,
)
from elmbench.errors import ConfigError, ElmbenchError, UnavailableError

if TYPE_CHECKING:
    from elmbench.accuracy.runner import AccuracyPlan
    from elmbench.accuracy.suites import AccuracySuite, AccuracyTask
    from elmbench.records import AccuracyRecord, RunWriter

Record = dict[str, Any]
CACHE_DIR = "lm_eval_cache"  # lm-eval's request cache inside the run folder, for --resume
DEFAULT_SUITE = "zero_shot"
# The settings of a run (run.json's spec), and the options they come from.
SETTINGS = (
    "models", "weights", "tokenizer", "suite", "tasks", "limit", "eval_batch_size", "device",
    "backend", "kernels", "norms", "dtypes", "data_dir", "allow_random", "seed", "quantize",
    "group_size", "share_prefix",
)  # fmt: skip
OPTION_OF = {"models": "model", "norms": "norm", "dtypes": "dtype"}


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


# Output --------------------------------------------------------------------------------------

SPEED_COLUMNS = [
    Column.key("norm", "norm", group=True),
    Column.key("task", "label"),
    Column.key("shots", "shots", numeric=True),
    Column.key("docs", "samples", numeric=True),
    Column.key("requests", "requests", numeric=True),
    Column.key("forwards", "forwards", numeric=True),
    Column("eval s", lambda r: _num(r.get("eval_s"), 2), numeric=True),
    Column("requests/s", lambda r: _num(r.get("requests_per_s"), 2), numeric=True),
    Column("tokens/s", lambda r: _num(r.get("input_tokens_per_s"), 0), numeric=True),
    Column("computed", lambda r: _share(r), numeric=True),
    Column("wall s", lambda r: _num(r.get("wall_s"), 1), numeric=True),
]


def _share(record: Record) -> str:
    """Tokens computed as a share of the inputs' tokens (below 100% where prefixes were shared)."""
    done, whole = record.get("computed_tokens"), record.get("input_tokens")
    return f"{100 * done / whole:.0f}%" if isinstance(done, int) and whole else "-"


def _num(value: Any, digits: int) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "-"


def _report(records: list[AccuracyRecord], suite: AccuracySuite, fmt: str, run_dir: Path) -> None:
    """The summary table per norm variant, whether the variants agree, and the speed per task."""
    from dataclasses import asdict

    from elmbench.accuracy.summary import norms_agree, summary_table

    norms = list(dict.fromkeys(r.norm for r in records))
    summaries = {n: summary_table(records, n, suite) for n in norms}  # (header, rows, notes)
    agreement = []
    if len(norms) > 1:
        agree, gap, names = norms_agree(records)
        agreement.append(
            f"norm variants {', '.join(names)} {'agree' if agree else 'DISAGREE'}: largest gap "
            f"{gap:.2f} points ({'within' if agree else 'beyond'} the tasks' standard errors)"
        )
    first = {(r.norm, r.label): asdict(r) for r in reversed(records)}  # one row per task
    speed = [first[key] for key in dict.fromkeys((r.norm, r.label) for r in records)]
    if fmt == "json":
        tables = {n: {"header": h, "rows": rs, "notes": ns} for n, (h, rs, ns) in summaries.items()}
        data = {"run_dir": str(run_dir), "suite": suite.name, "summaries": tables,
                "norms_agree": agreement[0] if agreement else None,
                "records": as_json(records)}  # fmt: skip
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


@dataclass(frozen=True)
class Combination:
    """One model, dtype and kernels of the run, with its weights: a backend loaded per task."""

    model: str | None
    dtype: str
    kernels: str
    label: str  # the model as records name it


def settings(opts: dict[str, Any]) -> dict[str, Any]:
    """The run's settings from the options: lists for the list options, defaults filled in."""
    from elmbench.accuracy.taskdata import data_dir
    from elmbench.dtypes import canonical
    from elmbench.suites import parse_value

    kernels = parse_value("kernels", split(opts.get("kernels")) or ["stock"], "option --kernels")
    data = data_dir(opts.get("data_dir"))
    batch = opts.get("eval_batch_size") or "1"
    if batch != "auto" and not (batch.isdigit() and int(batch) >= 1):
        raise ConfigError(f"option --eval-batch-size: a positive integer or auto, found {batch}")
    return {
        "models": split(opts.get("model")),
        "weights": opts.get("weights"),
        "tokenizer": opts.get("tokenizer"),
        "suite": opts.get("suite") or DEFAULT_SUITE,
        "tasks": split([opts["tasks"]] if opts.get("tasks") else None),
        "limit": opts.get("limit"),
        "eval_batch_size": batch if batch == "auto" else int(batch),
        "device": opts.get("device") or "auto",
        "backend": opts.get("backend"),
        "kernels": list(kernels),
        "norms": split(opts.get("norm")) or ["naive"],
        "dtypes": [canonical(d) for d in split(opts.get("dtype")) or ["float32"]],
        "data_dir": None if data is None else str(data),
        "allow_random": bool(opts.get("allow_random")),
        "seed": 0 if opts.get("seed") is None else opts["seed"],
        "quantize": opts.get("quantize"),
        "group_size": opts.get("group_size") or 64,
        "share_prefix": opts.get("share_prefix", True) is not False,
    }


def resume_settings(ctx: click.Context, opts: dict[str, Any]) -> dict[str, Any]:
    """A resumed run's own settings; options typed again must equal them."""
    from elmbench.records import read_run, run_path

    meta = read_run(run_path(opts["resume"], opts.get("out"))).meta
    if meta.kind != "accuracy":
        raise ElmbenchError(f"{opts['resume']}: cannot resume a '{meta.kind}' run as 'accuracy'")
    typed = given(ctx, opts)
    if typed:
        again = settings({**_as_options(meta.spec), **typed})
        differing = [k for k in SETTINGS if again[k] != meta.spec.get(k)]
        if differing:
            shown = ", ".join(
                f"{flag(OPTION_OF.get(k, k))} (run: {meta.spec.get(k)}, given: {again[k]})"
                for k in differing
            )
            raise ConfigError(
                f"--resume continues a run with its own settings; these differ: {shown}. Drop "
                "them, or start a new run"
            )
    return dict(meta.spec)


def _as_options(spec: dict[str, Any]) -> dict[str, Any]:
    """Stored settings back in the form the options take."""
    out = {OPTION_OF.get(k, k): v for k, v in spec.items()}
    for name in ("model", "norm", "dtype", "kernels"):
        if out.get(name) is not None:
            out[name] = (",".join(out[name]),)
    out["tasks"] = ",".join(spec["tasks"]) if spec.get("tasks") else None
    out["eval_batch_size"] = str(spec.get("eval_batch_size"))
    return out


def combinations(run: dict[str, Any], weights: str | None) -> Iterator[Combination]:
    """Every (model, dtype, kernels) the run evaluates, with the model's name in records."""
    from elmbench.accuracy.papermodel import checkpoint_config
    from elmbench.config import get_config

    checkpoint = checkpoint_config(weights)
    for model in run["models"] or [None]:
        label = checkpoint.name if checkpoint is not None else get_config(model or "270m").name
        for dtype in run["dtypes"]:
            for kernels in run["kernels"]:
                yield Combination(model, dtype, kernels, label)


@click.command()
@run_options("suite", "model", "weights")
@click.option(
    "--tokenizer",
    metavar="PATH",
    help="The LLaMA-2 SentencePiece tokenizer.model, a folder, or a Hugging Face id (default "
    f"with a preset's released weights: {PAPER_TOKENIZER}).",
)
@click.option("--tasks", help="Task labels (ARC-c) or lm-eval names (arc_challenge), commas.")
@click.option("--limit", type=click.IntRange(min=1), help="Documents per task, for quick runs.")
@click.option(
    "--eval-batch-size",
    "eval_batch_size",
    metavar="N|auto",
    help="Rows per forward pass (1; the results do not depend on it), or auto: on a GPU the "
    "largest batch that fits, on a CPU a token budget per forward.",
)
@run_options("device", "backend", "kernels", "norm", "dtype")
@click.option(
    "--data-dir",
    metavar="DIR",
    help="Task data folder (docs/accuracy.md; default: $ELMBENCH_DATA, else the Hub).",
)
@click.option(
    "--share-prefix/--no-share-prefix",
    default=True,
    show_default=True,
    help="Score a document's choices in one row, their shared prefix once; off: each whole.",
)
@click.option("--allow-random", is_flag=True, help="Random weights: tests the pipeline only.")
@run_options(*SESSION_OPTIONS, *OUTPUT)
@click.pass_context
def accuracy(ctx: click.Context, fmt: str, quiet: bool, **opts: Any) -> None:
    """Evaluate accuracy with lm-evaluation-harness, beside the paper's numbers.

    Runs the paper's suites (zero_shot, the default; openllm; llm360) with the same tasks and
    shots, records every task and metric with the published value and the delta, and prints the
    summary per suite and the evaluation speed. `--model 1_1b` alone evaluates the released
    weights with the paper's tokenizer from the Hugging Face Hub. Under `accelerate launch` the
    evaluation is data-parallel and rank 0 writes the records.
    """
    from elmbench.accuracy.papermodel import checkpoint_config, paper_model
    from elmbench.accuracy.runner import init_data_parallel
    from elmbench.accuracy.tokenizer import check_vocabulary, load_tokenizer
    from elmbench.config import get_config
    from elmbench.devices import resolve_device
    from elmbench.norms import get_norm
    from elmbench.records import AccuracyRecord, FailureRecord, check_writable, read_run

    check_session(opts)
    check_writable(opts.get("out"))
    run = resume_settings(ctx, opts) if opts.get("resume") else settings(opts)
    for model in run["models"] or []:
        get_config(model)  # an unknown name: one line with the names there are
    suite = load_accuracy_suite(run["suite"])
    tasks: list[AccuracyTask] = [suite.task(n) for n in run["tasks"] or []] or list(suite.tasks)
    weights_name, tokenizer_name = run["weights"], run["tokenizer"]
    if weights_name is None and not run["allow_random"]:
        if not run["models"]:
            raise ElmbenchError(
                "accuracy needs a model: give --model (e.g. 1_1b, whose released weights come "
                "from the Hugging Face Hub), or --weights PATH; --allow-random evaluates random "
                "weights, which only tests the pipeline"
            )
        if len(run["models"]) > 1:
            raise ConfigError("give one --model at a time for released weights")
        weights_name = official_weights(run["models"][0])
        tokenizer_name = tokenizer_name or PAPER_TOKENIZER
    if run["weights"] is not None and run["models"] and len(run["models"]) > 1:
        raise ConfigError("--weights is one checkpoint: give at most one --model with it")
    weights = weights_path(weights_name, tokenizer_name)
    checkpoint = checkpoint_config(weights)
    for model in run["models"] or []:  # a --model that is not the checkpoint is refused here
        if checkpoint is not None:
            paper_model(checkpoint, model)
    data = None if run["data_dir"] is None else Path(run["data_dir"])
    check_task_data(tasks, data)
    if data is None:  # a data folder's tasks are checked against its own task files
        check_task_names(tasks, f"suite '{suite.name}'")
    tokenizer = load_tokenizer(tokenizer_name)
    configs = (
        [checkpoint]
        if checkpoint is not None
        else [get_config(m) for m in run["models"] or ["270m"]]
    )
    for cfg in configs:
        check_vocabulary(tokenizer, cfg.name, cfg.vocab_size)
    device = resolve_device(run["device"], run["backend"])
    if "elmbench" in run["kernels"]:
        from elmbench.engine import unsupported

        reason = unsupported(device.framework_device, device.backend)
        if reason is not None:
            raise ConfigError(f"--kernels elmbench: {reason}; use --kernels stock")
    for norm in run["norms"]:
        status = get_norm(norm, device.backend).available()
        if not status.ok:
            raise UnavailableError(f"norm '{norm}' ({device.backend})", status.reason, status.hint)
    if run["quantize"] is not None and device.backend != "mlx":
        raise ConfigError(
            f"--quantize {run['quantize']} quantizes MLX weights; the backend here is "
            f"{device.backend}: use --backend mlx (with --device mlx-cpu or mlx-gpu)"
        )
    if weights is not None:
        check_weights(weights, run, device.backend)
    if device.backend == "mlx":  # after every check: it may print a warning, or restart
        from elmbench.backends import mlx_blas

        mlx_blas.ensure_in_process()  # may restart this command with OpenBLAS preloaded
    # Paths are stored absolute in run.json, so a run resumes from any folder.
    run.update(weights=absolute(run["weights"]), tokenizer=absolute(run["tokenizer"]))

    world = init_data_parallel()
    rank = int(os.environ.get("RANK", "0"))
    with resumable("accuracy") as ref:
        writer = _open_run(opts, run, device.to_record(), world, rank)
        ref.path = None if writer is None else writer.path
        try:
            run_dir = _shared_run_dir(writer, world)
            say = _say(rank == 0 and not quiet)
            combos = list(combinations(run, weights))
            say(
                f"accuracy: suite {suite.name}, {len(tasks)} task(s) x {len(run['norms'])} "
                f"norm(s) x {len(combos)} model/dtype/kernels on {device.backend}/"
                f"{device.framework_device}, tokenizer {tokenizer.identity}; run {run_dir}"
            )
            # Tasks already in a resumed run are skipped (every rank skips what rank 0 skips);
            # failed ones too, unless they are retried.
            retry = bool(opts.get("retry_failed"))
            done = {
                r.case_id for r in read_run(run_dir).records if not (retry and r.status == "failed")
            }
            for step in _steps(combos, run, tasks, device.backend, done, say):
                _evaluate(step, suite, run, device, weights_name, weights, tokenizer_name, data,
                          run_dir, writer, say)  # fmt: skip
            if writer is not None:
                writer.finish()
        finally:
            if writer is not None:
                writer.close()
    if writer is None:
        return
    final = read_run(writer.path)
    _report(final.of(AccuracyRecord), suite, fmt, writer.path)
    after_run(writer.path, bool(opts.get("report")))
    failed = final.of(FailureRecord)
    if failed:
        click.echo(
            f"{len(failed)} task metric(s) failed ({failed[0].reason}); see {writer.path}", err=True
        )
        sys.exit(1)


@dataclass(frozen=True)
class Step:
    """One task of the run to evaluate: its place, model combination, norm and case fields."""

    where: str  # "[i/n] label (task, shots, norm)" for progress lines
    combo: Combination
    norm: str
    task: AccuracyTask
    case: dict[str, Any]


def _say(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            click.echo(message, err=True)

    return say


def _steps(
    combos: list[Combination],
    run: dict[str, Any],
    tasks: list[AccuracyTask],
    backend: str,
    done: set[str],
    say: Callable[[str], None],
) -> Iterator[Step]:
    """The run's (combination, norm, task) steps that are not in the run yet."""
    from elmbench.records import AccuracyRecord

    steps = [(c, norm, task) for c in combos for norm in run["norms"] for task in tasks]
    for number, (combo, norm, task) in enumerate(steps, start=1):
        where = (
            f"[{number}/{len(steps)}] {task.label} ({task.task}, {task.shots}-shot, norm {norm})"
        )
        if len(combos) > 1:
            where += f", {combo.label} {combo.dtype} {combo.kernels}"
        case = {"model": combo.label, "backend": backend, "kernels": combo.kernels,
                "dtype": combo.dtype, "norm": norm, "task": task.task}  # fmt: skip
        if all(AccuracyRecord.case_id_of({**case, "metric": m}) in done for m in task.metrics):
            say(f"{where}: already in the run, skipped")
            continue
        yield Step(where, combo, norm, task, case)


def _evaluate(
    step: Step,
    suite: AccuracySuite,
    run: dict[str, Any],
    device: Any,
    weights_name: str | None,
    weights: str | None,
    tokenizer_name: str,
    data: Path | None,
    run_dir: Path,
    writer: RunWriter | None,
    say: Callable[[str], None],
) -> None:
    """Evaluate one task and append its records; NaN log-likelihoods fail it, the run goes on."""
    from elmbench.accuracy.runner import AccuracyPlan, run_accuracy
    from elmbench.backends import ModelSpec
    from elmbench.errors import NonFiniteError
    from elmbench.records import FailureRecord

    say(f"{step.where} ...")
    spec = ModelSpec(
        model=step.combo.model,
        weights=weights,
        norm=step.norm,
        dtype=step.combo.dtype,
        seed=run["seed"],
        device=_rank_device(device.framework_device),
        kernels=step.combo.kernels,
        quantize=run["quantize"],
        group_size=run["group_size"],
    )
    plan = AccuracyPlan(
        backend=device.backend,
        spec=spec,
        norms=(step.norm,),
        tokenizer=tokenizer_name,
        data_dir=data,
        tasks=(step.task.task,),
        limit=run["limit"],
        batch_size=run["eval_batch_size"],
        share_prefix=run["share_prefix"],
        allow_random=run["allow_random"],
        cache_dir=run_dir / CACHE_DIR,
        weights_name=weights_name,
        model_label=step.combo.label,
    )
    speed, start = EvalSpeed(), time.perf_counter()
    try:
        records = run_accuracy(suite, plan, lm_class=measured_adapter(speed))
    except Exception as exc:  # one task that fails (NaN, out of memory) must not end the run
        if not isinstance(exc, NonFiniteError):
            exc = ElmbenchError(f"{type(exc).__name__}: {exc}")
        if writer is not None:
            writer.append(
                *(FailureRecord("accuracy", {**step.case, "metric": m}, str(exc))
                  for m in step.task.metrics)
            )  # fmt: skip
        say(f"{step.where}: failed: {exc}")
        return
    wall = time.perf_counter() - start
    if writer is not None:
        writer.append(*(_case(record, speed, wall, plan) for record in records))
    values = ", ".join(f"{r['metric']} {r['value_pct']:.2f}" for r in records)
    rate = "-" if speed.requests_per_s is None else f"{speed.requests_per_s:.2f}"
    say(
        f"{step.where}: {values}; {speed.requests} requests in {speed.seconds:.1f} s "
        f"({rate} requests/s), {wall:.1f} s in all"
    )


def check_weights(weights: str, run: dict[str, Any], backend: str) -> None:
    """The checkpoint is readable, complete, finite, and one the backend can load as given."""
    from elmbench.checkpoints.verify import check_checkpoint
    from elmbench.config import get_config

    preset = get_config(run["models"][0]) if run["models"] else None
    checked = check_checkpoint(weights, preset)
    if checked.quantized and backend != "mlx":
        raise ConfigError(
            f"{weights} is an MLX-quantized folder, which only the MLX backend reads: add "
            "--backend mlx (with --device mlx-cpu or mlx-gpu)"
        )
    if checked.quantized and run["quantize"] is not None:
        raise ConfigError(f"{weights}: the checkpoint is already quantized; drop --quantize")


def _rank_device(framework_device: str) -> str:
    """Under `accelerate launch` with several processes, each takes the GPU of its local rank."""
    local = os.environ.get("LOCAL_RANK")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and local is not None and framework_device.startswith("cuda"):
        return f"cuda:{local}"
    return framework_device


def _open_run(
    opts: dict[str, Any],
    run: dict[str, Any],
    device: dict[str, Any],
    world: int,
    rank: int,
) -> RunWriter | None:
    """The run folder on rank 0 (new, or the resumed one); other ranks write nothing."""
    from elmbench.records import open_run, resume_run

    if rank != 0:
        return None
    if opts.get("resume"):
        return resume_run(
            opts["resume"],
            kind="accuracy",
            root=opts.get("out"),
            retry_failed=bool(opts.get("retry_failed")),
        )
    return open_run(
        "accuracy",
        spec=run,
        seed=run["seed"],
        device=device,
        extra={"world_size": world},
        root=opts.get("out"),
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


def _case(record: Record, speed: EvalSpeed, wall: float, plan: AccuracyPlan) -> AccuracyRecord:
    """A runner record as a typed run record: with the speed of its task and the plan's limit."""
    from elmbench.records import AccuracyRecord

    fields = {k: v for k, v in record.items() if k != "status"}
    fields.update(
        limit=plan.limit,
        batch_size=plan.batch_size,
        requests=speed.requests,
        forwards=speed.forwards,
        input_tokens=speed.input_tokens,
        computed_tokens=speed.computed_tokens,
        padded_tokens=speed.padded_tokens,
        share_prefix=plan.share_prefix,
        eval_s=speed.seconds,
        requests_per_s=speed.requests_per_s,
        input_tokens_per_s=speed.tokens_per_s,
        wall_s=wall,
    )
    return AccuracyRecord(**fields)


COMMANDS = [accuracy]
