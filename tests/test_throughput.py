"""`elmbench throughput`: plans and their errors, records on disk, resume, failures, the CLI."""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from elmbench.backends.isolate import Job, run_isolated
from elmbench.cli import cli
from elmbench.errors import ConfigError, ElmbenchError, UnavailableError
from elmbench.records import FailureRecord, NormBenchRecord, ThroughputRecord, read_run
from elmbench.suites import SuiteSpec
from elmbench.throughput.metrics import NORM_METRICS, THROUGHPUT_METRICS
from elmbench.throughput.plan import build_plan
from elmbench.throughput.run import run_spec

mlx = pytest.importorskip("mlx.core")

TINY = SuiteSpec(
    name="t",
    models=("tiny",),
    device="cpu",
    backend="torch",
    norms=("naive", "fused"),
    prompt_tokens=(8,),
    gen_tokens=(4,),
    warmup=0,
    repetitions=2,
    min_seconds=0.0,
)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


# --- plans -----------------------------------------------------------------------------------


def test_plan_is_the_product_of_the_lists_and_all_means_the_available_variants() -> None:
    spec = SuiteSpec(
        name="p",
        models=("tiny",),
        device="cpu",
        norms=("all",),
        dtypes=("float32", "bfloat16"),
        prompt_tokens=(8, 16),
        gen_tokens=(4,),
    )
    plan = build_plan(spec)
    torch_norms = {c.norm for c in plan.cases if c.backend == "torch"}
    assert torch_norms == {"naive", "fused", "compiled"}  # apex is absent, layernorm an ablation
    assert any("apex" in n and "not installed" in n for n in plan.notes)
    assert {c.backend for c in plan.cases} == {"torch", "mlx"}  # device cpu: both frameworks
    per_backend = {"torch": 3, "mlx": 3}
    assert len(plan.cases) == sum(n * 2 * 2 for n in per_backend.values())


def test_comparison_model_norms_include_its_native_layernorm() -> None:
    spec = SuiteSpec(name="p", models=("olmo-1b",), device="cpu", backend="torch", norms=("all",))
    assert [c.norm for c in build_plan(spec).cases] == ["native", "naive", "fused", "compiled"]


def test_comparison_models_run_eager_beside_compiled_openelm() -> None:
    spec = TINY.with_overrides(models=("tiny", "llama-270m"), compile=("none", "inductor"))
    plan = build_plan(spec)
    modes = {(c.model, c.compile) for c in plan.cases}
    assert modes == {("tiny", "none"), ("tiny", "inductor"), ("llama-270m", "none")}
    assert any("llama-270m: compile inductor left out" in n for n in plan.notes)


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"norms": ("apex",)}, UnavailableError, "apex is not installed"),
        ({"compile": ("cudagraphs",)}, UnavailableError, "CUDA graphs need a CUDA device"),
        ({"compile": ("mx.compile",)}, ConfigError, "allowed here: aoti, cudagraphs, inductor"),
        ({"models": ("olmo-1b",), "backend": "mlx"}, UnavailableError, "torch backend only"),
        ({"models": ("olmo-1b",), "compile": ("inductor",)}, UnavailableError, "eager only"),
        ({"device": "m2max", "backend": None}, UnavailableError, "mlx-cpu"),
        ({"device": "cuda"}, UnavailableError, "only cpu, mlx-cpu are present"),
        ({"prompt_tokens": (250,), "gen_tokens": (10,)}, ConfigError, "exceeds tiny's context"),
        ({"norms": ("rmsnorm",)}, ElmbenchError, "Valid torch norms"),
    ],
)
def test_impossible_plans_are_one_clear_error(
    changes: dict[str, object], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(")):
        build_plan(TINY.with_overrides(**changes))


# --- runs and records ------------------------------------------------------------------------


def test_records_hold_every_metric_with_raw_values_and_units(tmp_path: Path) -> None:
    events: list[str] = []
    result = run_spec(TINY, out=tmp_path, on_event=lambda kind, e: events.append(kind))
    run = read_run(result.path)
    meta, records = run.meta, run.of(ThroughputRecord)
    assert meta.kind == "throughput" and meta.spec["models"] == ["tiny"]
    assert meta.extra["membw"]["membw_gb_per_s"] > 0  # the CPU roofline is measured, and kept
    assert len(records) == len(run.records) == 2 and {r.kernels for r in records} == {"stock"}
    record = records[0]
    assert set(record.metrics) | set(record.skipped) == set(THROUGHPUT_METRICS)
    decode = record.metrics["decode_tokens_per_s"]
    assert decode.unit == "tokens/s" and len(decode.raw) == record.protocol.repetitions >= 2
    seconds = record.sections_raw_s["decode"]
    assert decode.raw == pytest.approx([3 / s for s in seconds])  # 4 new tokens: 3 cached steps
    assert decode.value == pytest.approx(statistics.median(decode.raw))
    assert decode.ci_low <= decode.value <= decode.ci_high  # type: ignore[operator]
    assert record.context.random_weights and record.describe["kernels"] == "stock"
    assert record.describe["engine"] is None  # stock PyTorch: no engine part ran
    assert "publishes no dense" in record.skipped["prefill_mfu_pct"]
    roofline, bandwidth = (
        record.metrics["decode_roofline_pct"],
        record.metrics["decode_bandwidth_gb_per_s"],
    )
    # A case shorter than the pairing interval is probed just before and after it; each
    # repetition is a share of the better of the two; the run's figure and the best probe kept too.
    roof = record.roofline
    assert roof is not None
    reps = record.protocol.repetitions
    assert [p["after_repetition"] for p in roof.probes] == [0, reps]
    beside = max(p["membw_gb_per_s"] for p in roof.probes)
    assert roof.paired_peak_raw_gb_per_s == (beside,) * reps
    assert roofline.raw == pytest.approx([100 * gb / beside for gb in bandwidth.raw])
    assert roofline.value == pytest.approx(statistics.median(roofline.raw))
    assert roof.best_probe_pct == pytest.approx(100 * bandwidth.value / beside)
    assert roof.run_peak_gb_per_s == meta.extra["membw"]["membw_gb_per_s"]
    assert roof.run_pct == pytest.approx(100 * bandwidth.value / roof.run_peak_gb_per_s)
    assert "bracket it in time" in roof.method
    wait = record.metrics["decode_cpu_wait_ms"]  # Linux reports run-queue waits
    assert wait.unit == "ms" and len(wait.raw) == reps and all(w >= 0 for w in wait.raw)
    assert events[0] == "plan" and events.count("case") == 2 and "progress" in events


def test_the_worker_probes_between_repetitions_outside_the_timed_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from elmbench.throughput import measure

    monkeypatch.setattr(measure, "PAIR_SECONDS", 0.0)  # a probe after every repetition
    monkeypatch.setattr(measure, "CASE_PROBE_MIB", 16)
    spec = {"model": "tiny", "weights": None, "norm": "naive", "dtype": "float32", "seed": 0,
            "device": "cpu", "compile": "none"}  # fmt: skip
    params = {"batch_size": 1, "prompt_tokens": 8, "gen_tokens": 4, "seed": 0, "warmup": 1,
              "repetitions": 3, "min_seconds": 0.0, "probe_bandwidth": True}  # fmt: skip
    job = Job("elmbench.throughput.measure:throughput", "torch", spec, params)
    (out,) = measure.throughput(job)
    probes = out["case_membw"]
    assert [p["after_repetition"] for p in probes] == [0, 1, 2, 3]
    assert all(p["membw_gb_per_s"] > 0 for p in probes)
    assert out["timing"]["protocol"]["repetitions"] == 3
    assert len(out["timing"]["sections_raw_s"]["total"]) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="restarting the peak is Linux's")
def test_the_probes_buffers_are_not_the_cases_peak_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from elmbench.measure.rss import reset_rss_peak, rss_peak_bytes
    from elmbench.throughput import measure

    monkeypatch.setattr(measure, "PAIR_SECONDS", 0.0)
    monkeypatch.setattr(measure, "CASE_PROBE_MIB", 160)  # far above the tiny case's own memory
    spec = {"model": "tiny", "weights": None, "norm": "naive", "dtype": "float32", "seed": 0,
            "device": "cpu", "compile": "none"}  # fmt: skip
    params = {"batch_size": 1, "prompt_tokens": 8, "gen_tokens": 4, "seed": 0, "warmup": 0,
              "repetitions": 2, "min_seconds": 0.0, "probe_bandwidth": True}  # fmt: skip
    measure.load("torch", spec)  # the model resident before the case, as in a worker
    reset_rss_peak()  # what earlier tests in this process held does not count
    before = rss_peak_bytes()
    (out,) = measure.throughput(
        Job("elmbench.throughput.measure:throughput", "torch", spec, params)
    )
    assert len(out["case_membw"]) == 3  # before, between and after: each held 160 MiB
    assert out["peak_memory_kind"] == "process_rss_peak"
    assert out["peak_memory_bytes"] < before + 64 * 2**20


def test_each_repetition_is_a_share_of_the_probes_that_bracket_it() -> None:
    from types import SimpleNamespace

    from elmbench.records import Estimate
    from elmbench.throughput.metrics import _roofline

    profile = SimpleNamespace(bandwidth_gb_per_s=50.0, source="start", name="cpu")
    device = SimpleNamespace(profile=profile)
    probes = [
        {"after_repetition": 0, "membw_gb_per_s": 40.0},
        {"after_repetition": 2, "membw_gb_per_s": 20.0},  # none ran after the first repetition
        {"after_repetition": 3, "membw_gb_per_s": 30.0},
    ]
    bandwidth = Estimate.of([10.0, 20.0, 30.0], "GB/s")
    share, roof = _roofline(device, probes, bandwidth)  # type: ignore[arg-type]
    assert isinstance(share, Estimate) and roof is not None
    assert roof.paired_peak_raw_gb_per_s == (40.0, 40.0, 30.0)
    assert share.raw == pytest.approx([25.0, 50.0, 100.0])
    assert share.value == pytest.approx(50.0) and roof.peak_gb_per_s == 40.0
    assert roof.best_probe_pct == pytest.approx(50.0)
    assert roof.run_pct == pytest.approx(40.0)
    # without probes: the device's published peak, and a reason where it has none
    plain, roof = _roofline(device, [], bandwidth)  # type: ignore[arg-type]
    assert isinstance(plain, Estimate) and plain.value == pytest.approx(40.0)
    profile.bandwidth_gb_per_s = None
    reason, roof = _roofline(device, [], bandwidth)  # type: ignore[arg-type]
    assert reason == "peak memory bandwidth of 'cpu' is unknown" and roof is None


def test_naive_and_fused_generate_the_same_tokens(tmp_path: Path) -> None:
    records = read_run(run_spec(TINY, out=tmp_path).path).of(ThroughputRecord)
    heads = {r.norm: r.generated_head for r in records}
    assert heads["naive"] == heads["fused"] and len(heads["naive"]) == 4


def test_resume_measures_only_what_an_interruption_lost(tmp_path: Path) -> None:
    first = run_spec(TINY, out=tmp_path)
    lines = (first.path / "records.jsonl").read_text().splitlines(keepends=True)
    # A crash mid-write leaves a partial line; resume keeps it aside and goes on.
    (first.path / "records.jsonl").write_text(lines[0] + lines[1][:20])
    resumed = run_spec(TINY, out=tmp_path, resume=first.path.name)
    assert (resumed.measured, resumed.skipped_done) == (1, 1)
    assert resumed.path == first.path
    run = read_run(first.path)
    assert (
        len(run.records) == 2
        and len(run.path.joinpath("records.jsonl").read_text().splitlines()) == 2
    )
    assert run.meta.finished_utc and run.meta.resumed
    again = run_spec(TINY, out=tmp_path, resume=first.path)
    assert again.measured == 0


def test_a_failing_case_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    spec = TINY.with_overrides(weights=str(tmp_path / "missing"), norms=("naive",))
    result = run_spec(spec, out=tmp_path / "runs")
    (record,) = result.records
    assert isinstance(record, FailureRecord) and "missing" in record.reason
    assert record.measurement == "throughput" and record.params["norm"] == "naive"


def test_a_worker_that_dies_fails_its_case_and_a_new_worker_runs_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dying_task.py").write_text(
        "import os\n"
        "def run(job):\n"
        "    if job.params.get('die'):\n"
        "        os._exit(9)\n"
        "    yield {'status': 'ok', 'pid': os.getpid()}\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    jobs = [
        Job("dying_task:run", "torch", {}, {"die": True}, "a"),
        Job("dying_task:run", "torch", {}, {}, "b"),
    ]
    first, second = run_isolated(jobs)
    assert first["status"] == "failed" and "exited with code 9" in first["reason"]
    assert second["status"] == "ok"


def test_norm_microbenchmark_records_time_and_bandwidth(tmp_path: Path) -> None:
    spec = SuiteSpec(name="n", kind="norms", models=("tiny",), device="cpu", norms=("naive",),
                     norm_tokens=(4,), warmup=0, repetitions=2, min_seconds=0.0)  # fmt: skip
    result = run_spec(spec, out=tmp_path)
    records = [r for r in result.records if isinstance(r, NormBenchRecord)]
    assert len(records) == len(result.records) == 4
    assert all(set(r.metrics) | set(r.skipped) == set(NORM_METRICS) for r in records)
    assert {r.where for r in records} == {"hidden", "head"}
    assert {r.backend for r in records} == {"torch", "mlx"}
    head = next(r for r in records if r.where == "head" and r.backend == "torch")
    assert head.dim == 16 and head.rows > 4  # (query + KV heads) x tokens rows of head_dim


# --- the command -----------------------------------------------------------------------------


def test_smoke_suite_end_to_end_through_the_cli_on_torch_and_mlx(tmp_path: Path) -> None:
    code, out, err = invoke(
        "throughput", "--suite", "smoke", "--out", str(tmp_path), "-q", "--format", "json"
    )
    assert code == 0, err
    data = json.loads(out)
    records = data["records"]
    assert {r["backend"] for r in records} == {"torch", "mlx"}
    assert {r["kind"] for r in records} == {"throughput"}
    assert all(r["metrics"]["decode_tokens_per_s"]["value"] > 0 for r in records)
    # The same greedy tokens on both frameworks for the same seeded weights and prompt.
    heads = {(r["backend"], r["norm"]): r["generated_head"] for r in records}
    assert heads["torch", "naive"] == heads["mlx", "naive"]
    assert Path(data["run"]).parent == tmp_path


def test_cli_table_shows_cases_and_where_the_records_are(tmp_path: Path) -> None:
    code, out, _ = invoke("throughput", "-m", "tiny", "--device", "cpu", "--backend", "torch",
                          "--norm", "naive", "-p", "8", "-n", "3", "--warmup", "0",
                          "--repetitions", "1", "--min-seconds", "0", "--out", str(tmp_path),
                          "-q", "--format", "markdown")  # fmt: skip
    assert code == 0
    assert "| tiny | torch/cpu | stock | float32 | none | naive | 1×8+3 |" in out
    assert f"records: {tmp_path}" in out and "roofline:" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "nosuch"], "unknown model 'nosuch'"),
        (["-p", "ten"], "expected integers"),
        (["-p", "0"], "must be a positive integer"),
        (["--suite", "zero_shot"], "is of kind 'accuracy'"),
        (["--suite", "nosuch"], "unknown suite 'nosuch'"),
        (["--device", "m2max"], "offers|mlx-cpu"),
        (["--dtype", "int8"], "dtypes from float32"),
        (["--resume", "nosuch-run"], "nosuch-run"),
        (["--weights", "/nosuch/checkpoint"], "key 'weights': /nosuch/checkpoint: no such file"),
    ],
)
def test_bad_options_are_one_line_and_non_zero(args: list[str], words: str) -> None:
    code, out, err = invoke("throughput", *args, "-q")
    assert code != 0
    message = (err or out).strip()
    assert len(message.splitlines()) == 1, message
    assert any(w in message for w in words.split("|")), message


def test_suites_lists_and_validates_every_file() -> None:
    code, out, _ = invoke("suites")
    assert code == 0 and "smoke" in out and "zero_shot" in out
    code, out, _ = invoke("suites", "validate")
    assert code == 0 and out.count("ok:") >= 7


def test_suites_validate_names_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: throughput\nprompt_tokens: [-1]\n")
    code, _, err = invoke("suites", "validate", str(bad))
    assert code == 2 and "bad.yaml: key 'prompt_tokens' must be" in err


def test_quantize_is_mlx_only_and_leaves_torch_out_with_a_note() -> None:
    with pytest.raises(ConfigError, match="quantizes MLX weights"):
        build_plan(TINY.with_overrides(quantize=4))
    plan = build_plan(replace(TINY, backend=None, quantize=8))
    assert {c.backend for c in plan.cases} == {"mlx"}
    assert "torch left out: --quantize applies to MLX only" in plan.notes


def test_quantized_mlx_case_runs_and_is_recorded(tmp_path: Path) -> None:
    spec = TINY.with_overrides(backend="mlx", device="mlx-cpu", norms=("fused",), quantize=8,
                               group_size=32)  # fmt: skip
    result = run_spec(spec, out=tmp_path)
    records = [r for r in result.records if isinstance(r, ThroughputRecord)]
    assert len(records) == 1, result.records
    assert records[0].context.quantize == 8


def test_a_worker_frees_the_previous_model_before_loading_the_next() -> None:
    import weakref

    from elmbench.throughput import measure

    first, _ = measure.load("mlx", {"model": "tiny", "seed": 1})
    model = weakref.ref(first.model)
    del first
    measure.load("mlx", {"model": "tiny", "seed": 2})
    assert model() is None  # else its memory would count in the next case's peak
