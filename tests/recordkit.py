"""Typed records with chosen raw values, and run folders that hold them (for compare and report).

Raw values here are synthetic, with known differences: the point is what `compare` and `report`
make of them, not the numbers themselves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from elmbench.records import (
    AccuracyRecord,
    Context,
    Estimate,
    FailureRecord,
    ProtocolInfo,
    Record,
    ThroughputRecord,
    open_run,
)


def context(hardware: str = "AMD EPYC", profile: str = "cpu") -> Context:
    """Where a synthetic case ran."""
    return Context(profile, hardware, None, "random(seed=0)", True, 0)


def protocol(repetitions: int, order: str = "interleaved", **over: Any) -> ProtocolInfo:
    """The ci suite's protocol with `repetitions` measured."""
    values: dict[str, Any] = {
        "warmup": 2, "min_repetitions": 10, "min_seconds": 2.0, "max_repetitions": 1000,
        "max_cv": 0.1, "repetitions": repetitions, "measured_s": 3.0, "stopped_by": "minimums",
        "order": order,
    }  # fmt: skip
    values.update(over)
    return ProtocolInfo(**values)


def noisy(center: float, spread: float, n: int = 10, seed: int = 0) -> list[float]:
    """`n` values around `center` with relative standard deviation `spread`."""
    rng = np.random.default_rng(seed)
    return [float(v) for v in center * (1 + spread * rng.standard_normal(n))]


def throughput(
    norm: str = "naive",
    decode: Sequence[float] = (),
    prefill: Sequence[float] = (),
    *,
    hardware: str = "AMD EPYC",
    order: str = "interleaved",
    protocol_over: dict[str, Any] | None = None,
    **case: Any,
) -> ThroughputRecord:
    """A throughput record of the ci suite's shape with the given raw tokens/s."""
    decode = list(decode) or noisy(700.0, 0.02, seed=1)
    prefill = list(prefill) or noisy(20000.0, 0.02, seed=2)
    fields: dict[str, Any] = {
        "model": "tiny", "kernels": "stock", "backend": "torch", "device": "cpu", "norm": norm,
        "dtype": "float32", "compile": "none", "batch_size": 4, "prompt_tokens": 128,
        "gen_tokens": 64,
    }  # fmt: skip
    fields.update(case)
    metrics = {
        "prefill_tokens_per_s": Estimate.of(prefill, "tokens/s"),
        "decode_tokens_per_s": Estimate.of(decode, "tokens/s"),
        "peak_memory_bytes": Estimate.single(747 * 2**20, "bytes"),
    }
    return ThroughputRecord(
        **fields,
        context=context(hardware),
        protocol=protocol(len(decode), order, **(protocol_over or {})),
        metrics=metrics,
        skipped={"prefill_mfu_pct": "'cpu' publishes no dense float32 peak FLOP/s"},
        num_params=1_000_000,
        num_norms=13,
    )


def accuracy(
    task: str = "piqa",
    label: str = "PIQA",
    value_pct: float = 60.0,
    stderr_pct: float | None = 1.0,
    metric: str = "acc",
    **over: Any,
) -> AccuracyRecord:
    """One accuracy record of `tiny` on random weights (override what a test needs)."""
    record = AccuracyRecord(
        model="tiny", backend="torch", kernels="stock", dtype="float32", norm="naive",
        task=task, metric=metric, label=label, suite="zero_shot", value=value_pct / 100,
        value_pct=value_pct, stderr_pct=stderr_pct, samples=500, shots=0, device="cpu",
        weights="random(seed=0)", random_weights=True, tokenizer="sentencepiece:tok.model",
        lm_eval_version="0.4.13",
    )  # fmt: skip
    return replace(record, **over)


def write_run(
    path: Path,
    records: Sequence[Record],
    kind: str = "throughput",
    host: dict[str, Any] | None = None,
    membw: float | None = None,
) -> Path:
    """A run folder at `path` holding `records` (each its own group), finished."""
    extra = {"membw": {"membw_gb_per_s": membw}} if membw is not None else {}
    writer = open_run(kind, spec={"name": "synthetic"}, seed=0, extra=extra, run_dir=path)
    with writer:
        for record in records:
            writer.append(record)
        writer.finish()
    if host is not None:
        meta = json.loads((path / "run.json").read_text())
        meta["host"].update(host)
        (path / "run.json").write_text(json.dumps(meta, indent=2))
    return path


FROZEN_META = {
    "created_utc": "2026-12-07T20:00:00+00:00",
    "finished_utc": "2026-12-07T20:05:00+00:00",
    "git_sha": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": False,
    "argv": ["elmbench", "(synthetic fixture)"],
}


def freeze(path: Path, host: dict[str, Any] | None = None) -> Path:
    """Give a synthetic run's run.json fixed times, code and host (for golden files)."""
    meta = json.loads((path / "run.json").read_text())
    meta.update(FROZEN_META)
    meta["versions"] = {"python": "3.11.7", "torch": "2.13.0+cpu"}
    meta["host"] = {"hostname": "vm", "cpu": "AMD EPYC", "cores": 2, "usable_cores": 2,
                    **(host or {})}  # fmt: skip
    (path / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def olmo_records() -> list[Record]:
    """OLMo-1B (its own LayerNorm) beside OpenELM-1.1B (naive and fused) in one setting, and
    the apex variant left out (a skipped case)."""
    from elmbench.throughput.metrics import model_facts

    shape = {"batch_size": 1, "prompt_tokens": 128, "gen_tokens": 32}
    made = [
        throughput("native", noisy(9.6, 0.02, 6, 1), noisy(220, 0.02, 6, 2), model="olmo-1b",
                   **shape),
        throughput("naive", noisy(7.1, 0.02, 6, 3), noisy(150, 0.02, 6, 4), model="1_1b",
                   **shape),
        throughput("fused", noisy(8.0, 0.02, 6, 5), noisy(171, 0.02, 6, 6), model="1_1b",
                   **shape),
    ]  # fmt: skip
    facts = {r.model: model_facts(r.model) for r in made}
    skipped = FailureRecord("throughput", {**made[1].case(), "norm": "apex"},
                            "NVIDIA apex is not installed", "skipped")  # fmt: skip
    return [
        *(replace(r, num_params=facts[r.model].num_params, num_norms=facts[r.model].num_norms)
          for r in made),
        skipped,
    ]  # fmt: skip


def paper_accuracy_records() -> list[AccuracyRecord]:
    """OpenELM-270M's zero-shot suite with the published values beside made-up measurements."""
    from elmbench.accuracy.suites import AccuracySuite
    from elmbench.suites import load_suite, suite_path

    suite = load_suite(suite_path("zero_shot"))
    assert isinstance(suite, AccuracySuite)
    records = []
    for i, task in enumerate(suite.tasks):
        published = task.published["OpenELM-270M"]
        for j, metric in enumerate(task.metrics):
            value = published + (-1) ** i * 0.4 * (i + 1) + 0.7 * j
            records.append(accuracy(
                task.task, task.label, round(value, 2), 1.2 + 0.1 * i, metric, model="270m",
                weights="checkpoint:OpenELM-270M", random_weights=False, published_pct=published,
                delta_pct=round(value, 2) - published, paper_model="OpenELM-270M",
                metric_known=task.metric_known, samples=1000 + 100 * i,
            ))  # fmt: skip
    return records


def second_machine(source: Path, target: Path, factor: float = 0.8) -> Path:
    """A copy of a throughput run as if measured on another machine, `factor` times as fast."""
    target.mkdir(parents=True)
    meta = json.loads((source / "run.json").read_text())
    meta["run_id"] = target.name
    meta["host"].update({"hostname": "ci-runner", "cpu": "Intel Xeon", "usable_cores": 4})
    (target / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    lines = []
    for line in (source / "records.jsonl").read_text().splitlines():
        data = json.loads(line)
        data["run_id"] = target.name
        data["context"]["device_hardware"] = "Intel Xeon"
        for name, est in data["metrics"].items():
            if name.endswith("tokens_per_s"):
                for key in ("value", "ci_low", "ci_high"):
                    est[key] = est[key] * factor
                est["raw"] = [v * factor for v in est["raw"]]
        lines.append(json.dumps(data))
    (target / "records.jsonl").write_text("\n".join(lines) + "\n")
    return target
