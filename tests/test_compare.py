"""`elmbench compare`: verdicts and exit codes on synthetic raw values with known differences."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from recordkit import accuracy, noisy, throughput, write_run

from elmbench.cli import cli
from elmbench.compare import (
    FAILED,
    FASTER,
    NOT_COMPARABLE,
    ONLY_BASE,
    SAME,
    SLOWER,
    WORSE,
    Comparison,
    compare_runs,
    markdown,
    resolve_run,
)
from elmbench.records import Estimate, FailureRecord, ThroughputRecord, read_run


def compare(tmp_path: Path, base: list, new: list, threshold: float = 5.0, **kw) -> Comparison:
    a = write_run(tmp_path / "base", base, **kw)
    b = write_run(tmp_path / "new", new, **kw)
    return compare_runs(read_run(a), read_run(b), threshold)


def verdicts(comparison: Comparison) -> dict[tuple[str, str], str]:
    return {(str(r.case.get("norm")), r.figure): r.verdict for r in comparison.rows}


def test_a_clear_regression_is_slower_and_exits_1(tmp_path: Path) -> None:
    base = [throughput("naive", noisy(700, 0.02, seed=1)), throughput("fused", noisy(720, 0.02))]
    new = [throughput("naive", noisy(600, 0.02, seed=3)), throughput("fused", noisy(720, 0.02))]
    result = compare(tmp_path, base, new)
    found = verdicts(result)
    assert found["naive", "decode_tokens_per_s"] == SLOWER
    assert found["fused", "decode_tokens_per_s"] == SAME
    assert found["naive", "prefill_tokens_per_s"] == SAME
    assert result.exit_code == 1
    slow = next(r for r in result.rows if r.verdict == SLOWER)
    assert slow.ratio is not None and 0.8 < slow.ratio < 0.9  # about 600 / 700
    assert slow.ci_low is not None and slow.ci_high is not None and slow.ci_high < 0.95
    text = markdown(result)
    assert "### elmbench compare: REGRESSION" in text
    assert "| norm=naive | decode tok/s |" in text and "**slower**" in text
    assert "every case: model=tiny backend=torch device=cpu" in text
    assert "geometric mean of new / baseline: prefill tok/s" in text


def test_noise_alone_is_no_significant_change_and_exits_0(tmp_path: Path) -> None:
    base = [throughput("naive", noisy(700, 0.03, seed=1), noisy(2e4, 0.03, seed=2))]
    new = [throughput("naive", noisy(700, 0.03, seed=5), noisy(2e4, 0.03, seed=6))]
    result = compare(tmp_path, base, new)
    assert {r.verdict for r in result.rows} == {SAME}
    assert result.exit_code == 0
    for row in result.rows:  # the smallest change these repetitions could have called
        assert row.detectable_pct is not None and row.detectable_pct >= 5.0


def test_the_floor_keeps_small_significant_changes_from_a_verdict(tmp_path: Path) -> None:
    base = [throughput("naive", noisy(700, 0.002, seed=1))]
    new = [throughput("naive", noisy(686, 0.002, seed=2))]  # 2% slower, clearly significant
    within = compare(tmp_path / "a", base, new)
    row = next(r for r in within.rows if r.figure == "decode_tokens_per_s")
    assert row.verdict == SAME and "below the 5% floor" in row.detail
    assert row.p_adjusted is not None and row.p_adjusted < 0.05
    strict = compare(tmp_path / "b", base, new, threshold=1.0)
    assert verdicts(strict)["naive", "decode_tokens_per_s"] == SLOWER


def test_faster_is_no_regression(tmp_path: Path) -> None:
    result = compare(tmp_path, [throughput("naive", noisy(700, 0.02))],
                     [throughput("naive", noisy(850, 0.02, seed=4))])  # fmt: skip
    assert verdicts(result)["naive", "decode_tokens_per_s"] == FASTER
    assert result.exit_code == 0


def test_different_devices_or_protocols_are_not_comparable_and_say_why(tmp_path: Path) -> None:
    other_cpu = compare(tmp_path / "a", [throughput("naive")],
                        [throughput("naive", hardware="Intel Xeon")])  # fmt: skip
    assert {r.verdict for r in other_cpu.rows} == {NOT_COMPARABLE}
    assert "device_hardware: AMD EPYC vs Intel Xeon" in other_cpu.rows[0].detail
    assert other_cpu.exit_code == 2
    other_protocol = compare(tmp_path / "b", [throughput("naive")],
                             [throughput("naive", protocol_over={"warmup": 1})])  # fmt: skip
    assert "protocol warmup: 2 vs 1" in other_protocol.rows[0].detail
    assert other_protocol.exit_code == 2
    one_thread = replace(throughput("naive"), describe={"threads": 1})
    threads = compare(tmp_path / "c", [throughput("naive")], [one_thread])
    assert threads.rows[0].detail == "threads: None vs 1"


def test_different_kernels_pair_the_case_as_not_comparable(tmp_path: Path) -> None:
    result = compare(tmp_path, [throughput("naive", kernels="stock")],
                     [throughput("naive", kernels="elmbench")])  # fmt: skip
    assert {r.verdict for r in result.rows} == {NOT_COMPARABLE}
    assert result.rows[0].detail == "kernels: stock vs elmbench"
    assert result.exit_code == 2
    assert "not comparable (kernels: stock vs elmbench)" in markdown(result)


def test_a_case_on_one_side_only_is_listed_and_the_rest_compared(tmp_path: Path) -> None:
    result = compare(tmp_path, [throughput("naive"), throughput("fused")], [throughput("naive")])
    found = verdicts(result)
    assert found["fused", "prefill_tokens_per_s, decode_tokens_per_s"] == ONLY_BASE
    assert found["naive", "decode_tokens_per_s"] == SAME
    assert result.exit_code == 0
    assert "- only in baseline: throughput norm=fused" in markdown(result)


def test_few_repetitions_can_detect_nothing_and_say_so(tmp_path: Path) -> None:
    result = compare(tmp_path, [throughput("naive", noisy(700, 0.01, n=3))],
                     [throughput("naive", noisy(500, 0.01, n=3, seed=9))])  # fmt: skip
    row = next(r for r in result.rows if r.figure == "decode_tokens_per_s")
    assert row.verdict == SAME and row.detectable_pct is None
    assert "too few repetitions" in row.detail
    assert "| none |" in markdown(result)


def test_a_case_that_fails_in_the_new_run_is_a_regression(tmp_path: Path) -> None:
    failed = FailureRecord("throughput", throughput("naive").case(), "out of memory")
    result = compare(tmp_path, [throughput("naive")], [failed])
    assert {r.verdict for r in result.rows} == {FAILED}
    assert "out of memory" in result.rows[0].detail
    assert result.exit_code == 1


def test_accuracy_deltas_are_judged_against_the_combined_standard_error(tmp_path: Path) -> None:
    base = [accuracy("piqa", "PIQA", 60.0, 1.0), accuracy("arc_easy", "ARC-e", 50.0, 1.0)]
    new = [accuracy("piqa", "PIQA", 60.5, 1.0), accuracy("arc_easy", "ARC-e", 44.0, 1.0)]
    result = compare(tmp_path, base, new, kind="accuracy")
    found = {r.case["task"]: r for r in result.rows}
    assert found["piqa"].verdict == SAME and found["piqa"].stderr == pytest.approx(2**0.5)
    assert found["arc_easy"].verdict == WORSE and found["arc_easy"].delta == pytest.approx(-6.0)
    assert result.exit_code == 1
    assert "| task=arc_easy | acc | 50.00 | 44.00 | -6.00 | 1.41 |" in markdown(result)
    stereo = [accuracy(metric="pct_stereotype", value_pct=v) for v in (60.0, 50.0)]
    lower = compare(tmp_path / "c", stereo[:1], stereo[1:], kind="accuracy")
    assert lower.rows[0].verdict == "better"  # CrowS-Pairs: lower is less biased


def test_notes_say_when_a_run_was_not_interleaved_and_what_differs(tmp_path: Path) -> None:
    base = [throughput("naive", order="sequential"), throughput("fused", order="sequential")]
    new = [throughput("naive"), throughput("fused")]
    a = write_run(tmp_path / "base", base, membw=22.5)
    b = write_run(tmp_path / "new", new, host={"hostname": "runner-2"}, membw=35.0)
    text = markdown(compare_runs(read_run(a), read_run(b)))
    assert "the baseline was not interleaved" in text and "the new run was not" not in text
    assert "different hosts" in text and "runner-2" in text
    assert "start-of-run read bandwidth: 22.5 GB/s (baseline), 35.0 GB/s (new run)" in text


# --- the command -------------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_exit_codes_step_summary_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = write_run(tmp_path / "base", [throughput("naive", noisy(700, 0.02))])
    slow = write_run(tmp_path / "slow", [throughput("naive", noisy(560, 0.02, seed=7))])
    same = write_run(tmp_path / "same", [throughput("naive", noisy(700, 0.02, seed=8))])
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, out, _ = invoke("compare", str(base), str(slow))
    assert code == 1 and "**slower**" in out
    assert summary.read_text().strip() == out.strip()
    code, out, _ = invoke("compare", str(base), str(same), "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["exit_code"] == 0 and data["counts"] == {SAME: 2}
    code, _, err = invoke("compare", str(base))
    assert code == 2 and err.strip() == "error: compare takes BASELINE and NEW (2 runs); 1 given"


def test_saved_baselines_are_found_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = write_run(tmp_path / "run", [throughput("naive")])
    code, out, _ = invoke("compare", "--save-baseline", "ci", str(run))
    assert code == 0 and "reports/baselines/ci" in out
    saved = tmp_path / "reports" / "baselines" / "ci"
    assert sorted(p.name for p in saved.iterdir()) == ["records.jsonl", "run.json"]
    assert resolve_run("ci").meta.run_id == "run"
    code, out, _ = invoke("compare", "ci", str(run))
    assert code == 0 and "no significant regression" in out
    code, _, err = invoke("compare", "--save-baseline", "../x", str(run))
    assert code == 2 and "baseline name '../x'" in err


def test_an_unknown_schema_version_is_refused_with_one_line(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [throughput("naive")])
    lines = (
        (run / "records.jsonl").read_text().replace('"schema_version": 2', '"schema_version": 9')
    )
    (run / "records.jsonl").write_text(lines)
    code, out, err = invoke("compare", str(run), str(run))
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "schema_version 9 is not supported" in err


def test_profile_runs_are_not_compared_and_say_so() -> None:
    profile = read_run(Path(__file__).parent / "data" / "report" / "profile")
    result = compare_runs(profile, profile)
    assert not result.rows and result.exit_code == 2
    assert "nothing comparable" in markdown(result)
    assert any("profile records are not compared" in note for note in result.notes)


def test_figures_chooses_what_is_judged(tmp_path: Path) -> None:
    def with_on_cpu(norm: str, wall: list[float], on_cpu: list[float]) -> ThroughputRecord:
        record = throughput(norm, wall)
        metrics = {**record.metrics, "decode_on_cpu_tokens_per_s": Estimate.of(on_cpu, "tokens/s")}
        return replace(record, metrics=metrics)

    # the wall-clock rate fell by a third (the machine got busy), the on-CPU rate did not
    base = [with_on_cpu("naive", noisy(700, 0.02, seed=1), noisy(900, 0.01, seed=2))]
    new = [with_on_cpu("naive", noisy(470, 0.02, seed=3), noisy(900, 0.01, seed=4))]
    every = compare(tmp_path / "a", base, new)
    assert verdicts(every)["naive", "decode_tokens_per_s"] == SLOWER
    assert verdicts(every)["naive", "decode_on_cpu_tokens_per_s"] == SAME
    a, b = read_run(tmp_path / "a" / "base"), read_run(tmp_path / "a" / "new")
    chosen = compare_runs(a, b, figures=["decode_on_cpu_tokens_per_s"])
    assert [r.figure for r in chosen.rows] == ["decode_on_cpu_tokens_per_s"]
    assert chosen.exit_code == 0
    code, out, _ = invoke("compare", str(a.path), str(b.path), "--figures",
                          "decode_on_cpu_tokens_per_s")  # fmt: skip
    assert code == 0 and "decode on-CPU tok/s" in out
    code, _, err = invoke("compare", str(a.path), str(b.path), "--figures", "speed")
    assert code == 2 and "unknown figure 'speed'" in err
