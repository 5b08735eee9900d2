"""`elmbench profile` through the CLI: traces the TensorBoard plugin loads, shares that add up,
records `read_run` reads, the naive norm's extra cost beside the fused one, MLX, resume, errors.

The profiler itself (labels, categories, OLMo hooks, MLX staging) is tested in test_profile.py.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import platform
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from elmbench.backends.isolate import Job
from elmbench.cli import cli
from elmbench.profile.categories import BETWEEN, CATEGORIES, NORM_PARTS
from elmbench.records import ProfileRecord, read_run

REPS = 4  # profiled steps per phase
TINY = ["-m", "tiny", "-p", "8", "-n", "8", "--repetitions", str(REPS), "--warmup", "1", "-q"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["profile", *args])


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def by_case(run: Path) -> dict[tuple[str, str], ProfileRecord]:
    """A run's profile records by (norm, phase)."""
    return {(r.norm, r.phase): r for r in read_run(run).of(ProfileRecord)}


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Result, Path]]:
    """tiny on torch CPU, naive and fused, both phases, traces on, one intra-op thread (on a
    loaded 2-core machine a parallel kernel waits for a busy core)."""
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # read by the worker process
        args = [*TINY, "--backend", "torch", "--device", "cpu", "--norm", "naive,fused"]
        result = invoke(*args, "--out", str(out))
    assert result.exit_code == 0, result.output
    yield result, only_run(out)


def test_table_puts_the_norm_first_and_ends_with_the_what_if_and_tensorboard(
    torch_run: tuple[Result, Path],
) -> None:
    result, run = torch_run
    out = result.stdout
    titles = [
        "profile: the norm's share of each phase",
        "time by category",
        "time by model part, norms first",
        "top 10 operators",
    ]
    assert [out.index(t) for t in titles] == sorted(out.index(t) for t in titles)
    category_rows = out.split("time by category")[1].split("──\n")[1].splitlines()
    assert category_rows[0].startswith("norm ")
    part_rows = out.split("norms first")[1].split("──\n")[1].splitlines()
    assert [r.split()[0] for r in part_rows[:5]] == list(NORM_PARTS)
    assert "what if (naive decode, naive):" in out and "what if (fused decode, fused):" in out
    assert "without the norm's" in out and "from any norm optimisation" in out
    assert out.rstrip().endswith(f"tensorboard --logdir {run / 'traces'}")
    assert "kernels/token" not in out  # no device trace on CPU: the column is left out
    # Ranges are Python time, not operators: the top list holds operators only.
    top = out.split("top 10 operators")[1]
    assert "elm::" not in top and "elm_phase::" not in top and "aten::mm" in top


def test_tensorboard_plugin_loads_every_trace(torch_run: tuple[Result, Path]) -> None:
    from torch_tb_profiler import consts
    from torch_tb_profiler.io.cache import Cache
    from torch_tb_profiler.profiler.loader import RunLoader

    _, run = torch_run
    traces = run / "traces"
    runs = sorted(p.name for p in traces.iterdir() if p.is_dir())
    assert runs == [
        f"tiny-torch-stock-{norm}-float32-none-b1-p8-n8-{phase}"
        for norm in ("fused", "naive")
        for phase in ("decode", "prefill")
    ]
    loaded = RunLoader(runs[2], str(traces / runs[2]), Cache()).load()  # naive decode
    assert len(loaded.profiles) == 1, "the plugin failed to parse the trace (see its log above)"
    profile = next(iter(loaded.profiles.values()))
    assert consts.OP_VIEW in profile.views and consts.TRACE_VIEW in profile.views
    assert len(profile.overview["steps"]["rows"]) == REPS
    chrome = sorted(traces.glob("*.chrome.json"))
    assert [p.name.removesuffix(".chrome.json") for p in chrome] == runs
    names = {e.get("name") for e in json.loads(chrome[2].read_text())["traceEvents"]}
    assert {"elm::attn_norm", "elm_phase::decode"} <= names


def test_records_read_back_with_shares_that_sum_to_100(torch_run: tuple[Result, Path]) -> None:
    _, run = torch_run
    read = read_run(run)
    meta = read.meta
    assert meta.kind == "profile" and meta.finished_utc is not None
    assert meta.extra["profile"]["phase"] == "both" and meta.extra["profile"]["trace"] is True
    assert len(read.records) == 4  # one record per case and phase
    summaries = by_case(run)
    assert sorted(summaries) == [(n, p) for n in ("fused", "naive") for p in ("decode", "prefill")]
    ops_rows = list(csv.DictReader((run / "ops.csv").open()))
    for key, s in summaries.items():
        assert s.steps == REPS and s.model == "tiny" and s.kernels == "stock"
        assert s.context.random_weights is True and s.ops_csv == "ops.csv"
        assert (run / s.traces["tensorboard_run_dir"]).is_dir()  # stored relative to the run
        cats, parts = s.categories, s.parts
        assert [c.category for c in cats] == list(CATEGORIES)
        assert math.isclose(sum(c.share_pct for c in cats), 100.0, abs_tol=1e-6)
        assert math.isclose(sum(p.share_pct for p in parts), 100.0, abs_tol=1e-6)
        step_ms = sum(c.ms_per_step for c in cats)
        assert sum(p.ms_per_step for p in parts) == pytest.approx(step_ms)
        assert cats[0].share_pct == pytest.approx(s.norm_share.share_pct)
        # The raw operator table holds the same time.
        mine = [r for r in ops_rows if (r["norm"], r["phase"]) == key]
        assert sum(float(r["self_cpu_ms"]) for r in mine) == pytest.approx(step_ms * REPS)
        assert s.wall_ms_per_token is not None
        assert s.ms_per_token_without_norm == pytest.approx(
            s.wall_ms_per_token * (1 - s.norm_share.share_pct / 100)
        )


def test_naive_norm_dispatches_and_costs_more_than_fused(torch_run: tuple[Result, Path]) -> None:
    # On CPU, F.rms_norm is a composite of the same element-wise kernels, so what the naive
    # norm adds there is one Python dispatch per operator: 8 per call instead of 1, and that
    # Python time. A norm call's median Python time is taken in units of the same run's qkv_proj
    # call (one linear), so that machine load, which differs between the runs, cancels, and a
    # preempted call does not move the median.
    _, run = torch_run
    summary = by_case(run)
    calls = (4 * 3 + 1) * 8  # 4 norms in each of 3 layers, the final norm; 8 decode steps
    for norm, ops in (("naive", 8), ("fused", 1)):
        s = summary[(norm, "decode")].norm_share
        assert s.calls_per_step == calls and s.ops_per_call == ops

    def python_time_of_a_norm_call(norm: str) -> float:
        record = summary[(norm, "decode")]
        qkv = next(p for p in record.parts if p.part == "qkv_proj")
        assert record.norm_share.median_framework_us and qkv.median_framework_us
        return record.norm_share.median_framework_us / qkv.median_framework_us

    assert python_time_of_a_norm_call("naive") > 1.25 * python_time_of_a_norm_call("fused")


def test_resume_of_a_finished_run_profiles_nothing(torch_run: tuple[Result, Path]) -> None:
    _, run = torch_run
    before = read_run(run).records
    result = invoke("--resume", str(run), "-q", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["run"] == str(run) and len(data["records"]) == len(before)
    after = read_run(run)
    assert after.records == before and len(after.meta.resumed) == 1


def test_mlx_breakdown_on_cpu_beside_the_plain_timing(tmp_path: Path) -> None:
    pytest.importorskip("mlx.core")
    args = ["-m", "tiny", "-p", "8", "-n", "4", "--repetitions", "2", "--phase", "decode"]
    result = invoke(*args, "--backend", "mlx", "--device", "mlx-cpu", "--out", str(tmp_path), "-q")
    assert result.exit_code == 0, result.output
    assert "MLX: parts are timed by evaluating the model part by part" in result.stdout
    assert "profiled" in result.stdout and "tensorboard" not in result.stdout
    run = only_run(tmp_path)
    s = by_case(run)[("naive", "decode")]
    assert s.backend == "mlx" and s.time_basis == "mlx_staged_eval_wall_time"
    assert len(s.wall_ms_per_step) == 2 and s.instrumented_ms_per_step > 0
    assert isinstance(s.overhead_pct, float) and 0 < s.norm_share.share_pct < 100
    parts = {p.part: p for p in s.parts}
    assert set(NORM_PARTS) | {BETWEEN} <= set(parts)
    assert math.isclose(sum(p.share_pct for p in parts.values()), 100.0, abs_tol=1e-6)
    assert not (run / "ops.csv").exists()  # MLX has parts, not operators


def test_comparison_models_are_built_by_name_in_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from elmbench.models import comparison
    from elmbench.profile.run import profile_case

    toy = dataclasses.replace(
        comparison.get_comparison("olmo-1b"), name="olmo-toy", hidden_size=32, num_layers=1,
        num_heads=2, num_kv_heads=2, intermediate_size=64, vocab_size=100,
    )  # fmt: skip
    monkeypatch.setitem(comparison.COMPARISON_MODELS, "olmo-toy", toy)
    spec = {"model": "olmo-toy", "weights": None, "norm": "native", "dtype": "float32",
            "seed": 0, "device": "cpu", "compile": "none"}  # fmt: skip
    params = {"batch_size": 1, "prompt_tokens": 4, "gen_tokens": 2, "phases": ["decode"],
              "trace_dir": None, "label": "toy", "schedule": [0, 1, 1], "seed": 0, "top": 3,
              "metal_capture": None}  # fmt: skip
    (out,) = profile_case(Job("elmbench.profile.run:profile_case", "torch", spec, params, "c"))
    fields = out["phases"]["decode"]
    parts = {p["part"] for p in fields["parts"]}
    assert {"attn_norm", "ffn_norm", "final_norm", "qkv_proj", "proj_1"} <= parts
    assert fields["steps"] == 1 and fields["norm_share"]["calls_per_step"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--phase", "decod"], "'decod' is not one of 'prefill', 'decode', 'both'"),
        (["--norm", "apex"], "norm 'apex' (torch) is not available here"),
        (["--device", "cuda"], "device"),
        (["--compile", "cudagraphs"], "CUDA graphs need a CUDA device"),
        (["--backend", "mlx", "--compile", "mx.compile"], "evaluates the uncompiled model"),
        (["--repetitions", "0"], "'repetitions' must be an integer >= 1"),
        (["--top", "0"], "--top must be a positive integer"),
        (["--backend", "torch", "--metal-capture"], "applies to MLX cases"),
    ],
)
def test_clear_one_line_errors_and_no_run_folder(
    tmp_path: Path, args: list[str], message: str
) -> None:
    if "mlx" in args:
        pytest.importorskip("mlx.core")
    result = invoke("-m", "tiny", *args, "--out", str(tmp_path), "-q")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert message in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(platform.system() == "Darwin", reason="Metal may be present")
def test_metal_capture_is_unavailable_off_apple_silicon(tmp_path: Path) -> None:
    pytest.importorskip("mlx.core")
    result = invoke("-m", "tiny", "--backend", "mlx", "--metal-capture", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "Metal capture is not available here: Metal exists on Apple silicon only" in (
        result.stderr
    )
