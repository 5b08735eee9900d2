"""`elmbench accuracy` end to end on samples of the real task data: records, summary, resume and
every clear error, with the tiny model (random weights) and a SentencePiece tokenizer trained here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from elmbench.cli import cli
from elmbench.records import read_run

DATA = Path(__file__).parent / "data" / "evaldata"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ELMBENCH_DATA": None}
# Valid ranges of the values of each metric (fractions).
RANGES = {"acc": (0.0, 1.0), "acc_norm": (0.0, 1.0), "pct_stereotype": (0.0, 1.0)}
LIMIT = 3


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """Run `elmbench accuracy ARGS` in this process, offline."""
    return CliRunner().invoke(
        cli, ["accuracy", *args], env={**OFFLINE, **(env or {})}, prog_name="elmbench"
    )


def assert_one_line_error(result: Result, *needles: str) -> None:
    """A user mistake: exit 2, nothing on stdout, one `error:` line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def common(sp_model: Path, out: Path) -> list[str]:
    """Options of a quick pipeline run: tiny random model, test tokenizer, the data samples."""
    return [
        "--model", "tiny", "--allow-random", "--tokenizer", str(sp_model),
        "--data-dir", str(DATA), "--limit", str(LIMIT), "--batch-size", "4", "--out", str(out),
    ]  # fmt: skip


def only_run(out: Path) -> Path:
    """The single run folder under `out`."""
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def llm360(tmp_path_factory: pytest.TempPathFactory, sp_model: Path) -> tuple[Result, Path]:
    """The LLM360 suite's tasks with their shots (ARC-c and CrowS-Pairs 25, MMLU and WinoGrande 5,
    PIQA and TruthfulQA MC2 0), as JSON."""
    out = tmp_path_factory.mktemp("llm360")
    tasks = "ARC-c,CrowS-Pairs,MMLU,PIQA,TruthfulQA,WinoGrande"
    result = invoke(
        *common(sp_model, out), "--suite", "llm360", "--tasks", tasks, "--format", "json"
    )
    assert result.exit_code == 0, result.output
    return result, only_run(out)


SHOTS = {"ARC-c": 25, "CrowS-Pairs": 25, "MMLU": 5, "PIQA": 0, "TruthfulQA": 0, "WinoGrande": 5}


def test_full_run_writes_records_in_valid_ranges(llm360: tuple[Result, Path]) -> None:
    result, run = llm360
    meta, records = read_run(run)
    assert meta["kind"] == "accuracy" and meta["finished_utc"] is not None
    assert meta["spec"]["suite"] == "llm360" and meta["spec"]["limit"] == LIMIT
    by = {(r["label"], r["metric"]): r for r in records}
    assert set(by) == {
        ("ARC-c", "acc"), ("ARC-c", "acc_norm"), ("CrowS-Pairs", "pct_stereotype"),
        ("MMLU", "acc"), ("PIQA", "acc"), ("PIQA", "acc_norm"), ("TruthfulQA", "acc"),
        ("WinoGrande", "acc"),
    }  # fmt: skip
    for (label, metric), r in by.items():
        low, high = RANGES[metric]
        assert low <= r["value"] <= high and r["value_pct"] == pytest.approx(100 * r["value"])
        assert r["shots"] == SHOTS[label]
        assert r["samples"] == LIMIT  # MMLU: the one subject in the samples
        assert r["stderr_pct"] is None or r["stderr_pct"] >= 0
        assert r["random_weights"] is True and r["weights"] == "random(seed=0)"
        assert r["backend"] == "torch" and r["device"] == "cpu" and r["norm"] == "naive"
        assert r["tokenizer"].startswith("sentencepiece:") and r["lm_eval_version"] == "0.4.13"
        assert r["task_version"] is not None and r["published_pct"] is None  # tiny: no paper row
        # Speed of the task: every request answered by the model, none from a cache.
        assert r["requests"] >= LIMIT * 2 and r["forwards"] >= 1
        assert r["requests_per_s"] == pytest.approx(r["requests"] / r["eval_s"])
        assert r["padded_tokens"] >= r["input_tokens"] >= r["forwards"]
        assert r["input_tokens_per_s"] == pytest.approx(r["input_tokens"] / r["eval_s"])
        assert r["wall_s"] >= r["eval_s"] > 0
    # Records of one task share its speed; a choice per request (two per PIQA question).
    assert by["PIQA", "acc"]["requests"] == by["PIQA", "acc_norm"]["requests"] == 2 * LIMIT
    assert by["ARC-c", "acc"]["requests"] >= 3 * LIMIT
    # The JSON output: the summary of the suite with the same measured values, and the records.
    out = json.loads(result.stdout)
    assert out["run_dir"] == str(run) and len(out["records"]) == len(records)
    header, rows, notes = (out["summaries"]["naive"][k] for k in ("header", "rows", "notes"))
    assert header == ["", "ARC-c*", "CrowS-Pairs", "MMLU", "PIQA*", "TruthfulQA", "WinoGrande",
                      "Average"]  # fmt: skip
    measured = dict(zip(header, next(r for r in rows if r[0] == "measured (acc*)"), strict=True))
    assert measured["MMLU"] == f"{by['MMLU', 'acc']['value_pct']:.2f}"
    assert any("RANDOM WEIGHTS" in n for n in notes)


def test_suite_file_published_values_and_norm_agreement(tmp_path: Path, sp_model: Path) -> None:
    suite = tmp_path / "mine.yaml"
    suite.write_text(
        "kind: accuracy\ndescription: BoolQ with a published value for the test model\n"
        "tasks:\n- label: BoolQ\n  task: boolq\n  shots: 0\n  metrics: [acc]\n"
        "  published:\n    tiny (test model): 62.5\n"
    )
    out = tmp_path / "out"
    args = ["--suite", str(suite), "--limit", "4", "--norm", "naive,fused", "--format", "markdown"]
    result = invoke(*common(sp_model, out), *args)
    assert result.exit_code == 0, result.output
    records = read_run(only_run(out))[1]
    assert [r["norm"] for r in records] == ["naive", "fused"]
    for record in records:
        assert record["label"] == "BoolQ" and record["samples"] == 4
        assert record["published_pct"] == 62.5
        assert record["delta_pct"] == pytest.approx(record["value_pct"] - 62.5)
    assert records[0]["value"] == records[1]["value"]  # the fused norm changes no result
    text = result.stdout
    assert "**mine: BoolQ with a published value for the test model (norm fused)**" in text
    assert "| paper | 62.50 | 62.50 |" in text and "**Evaluation speed**" in text
    assert "norm variants fused, naive agree: largest gap 0.00 points" in text
    assert "[2/2] BoolQ (boolq, 0-shot, norm fused) ..." in result.stderr  # progress on stderr


def test_resume_continues_an_interrupted_run(llm360: tuple[Result, Path], tmp_path: Path) -> None:
    _, finished = llm360
    run = tmp_path / finished.name
    shutil.copytree(finished, run)
    lines = (run / "records.jsonl").read_text().splitlines(keepends=True)
    # Interrupted while writing WinoGrande, the last task: its record was cut off mid-line.
    kept = [ln for ln in lines if '"label": "WinoGrande"' not in ln]
    cut = next(ln for ln in lines if '"label": "WinoGrande"' in ln)
    (run / "records.jsonl").write_text("".join(kept) + cut[:40])
    result = invoke("--resume", str(run), "--format", "csv")
    assert result.exit_code == 0, result.output
    for label in ("ARC-c", "CrowS-Pairs", "MMLU", "PIQA", "TruthfulQA"):
        assert f"{label} (" in result.stderr and "already in the run, skipped" in result.stderr
    assert "[6/6] WinoGrande (winogrande, 5-shot, norm naive) ..." in result.stderr
    meta, records = read_run(run)
    assert len(meta["resumed"]) == 1 and "truncated last line" in meta["resumed"][0]["notes"][0]
    want = {(r["label"], r["metric"]): r["value"] for r in read_run(finished)[1]}
    assert {(r["label"], r["metric"]): r["value"] for r in records} == want
    (wino,) = [r for r in records if r["label"] == "WinoGrande"]
    assert wino["requests"] == 0  # every request came from lm-eval's cache in the run folder
    assert result.stdout.splitlines()[0].startswith("norm,row,ARC-c*,CrowS-Pairs,MMLU")
    # Settings given again must match the run's.
    refused = invoke("--resume", str(run), "--limit", "5")
    assert_one_line_error(refused, "other settings", "limit")


# Clear errors, each before any run folder is made ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--allow-random"], ["no tokenizer given", "--tokenizer PATH"]),
        (["--allow-random", "--tokenizer", "/no/such/tokenizer.model"], ["does not exist"]),
        ([], ["accuracy needs trained weights", "--allow-random"]),
        (["--weights", "/no/such/ckpt"], ["weights path '/no/such/ckpt' does not exist"]),
        (["--allow-random", "--tasks", "ARC-x"], ["unknown task", "ARC-x", "arc_challenge"]),
        (["--allow-random", "--suite", "nope"], ["unknown suite 'nope'", "zero_shot"]),
        (["--allow-random", "--suite", "smoke"], ["not an accuracy suite", "llm360"]),
        (["--allow-random", "--norm", "naive,nope"], ["unknown torch norm 'nope'"]),
        (
            ["--allow-random", "--tasks", "HellaSwag"],
            ["task 'hellaswag' has no local data: expected", "hellaswag/validation.jsonl"],
        ),
    ],
    ids=["no-tokenizer", "tokenizer-missing", "no-weights", "weights-missing", "unknown-task",
         "unknown-suite", "not-accuracy-suite", "unknown-norm", "task-data-missing"],
)  # fmt: skip
def test_clear_errors(args: list[str], needles: list[str], tmp_path: Path, sp_model: Path) -> None:
    given = dict(zip(args[::2], args[1::2], strict=False))
    base = ["--model", "tiny", "--data-dir", str(DATA), "--out", str(tmp_path / "out")]
    if "--tokenizer" not in given and args != ["--allow-random"]:
        base += ["--tokenizer", str(sp_model)]
    if "--tasks" not in given:
        base += ["--tasks", "PIQA"]  # in the samples: only the error under test can stop the run
    assert_one_line_error(invoke(*base, *args), *needles)
    assert not (tmp_path / "out").exists()


def test_offline_without_a_data_folder_is_a_clear_error(tmp_path: Path, sp_model: Path) -> None:
    result = invoke("--model", "tiny", "--allow-random", "--tokenizer", str(sp_model))
    assert_one_line_error(result, "offline", "--data-dir DIR", "ELMBENCH_DATA")


def test_missing_file_in_the_data_folder_names_it(tmp_path: Path, sp_model: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    (data / "piqa" / "validation.jsonl").unlink()
    result = invoke(
        "--model", "tiny", "--allow-random", "--tokenizer", str(sp_model), "--tasks", "PIQA",
        env={"ELMBENCH_DATA": str(data)},
    )  # fmt: skip
    assert_one_line_error(result, f"expected {data.resolve() / 'piqa' / 'validation.jsonl'}")


@pytest.mark.parametrize(
    ("env", "device", "want"),
    [
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "cuda:0", "cuda:1"),
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "cpu", "cpu"),
        ({}, "cuda:0", "cuda:0"),
    ],
)
def test_each_process_of_accelerate_launch_takes_its_own_gpu(
    env: dict[str, str], device: str, want: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from elmbench.cli.accuracy import _rank_device

    for key in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _rank_device(device) == want
