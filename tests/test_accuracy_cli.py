"""`elmbench accuracy` end to end on samples of the real task data: records, summary, resume and
every clear error, with the tiny model (random weights) and a SentencePiece tokenizer trained here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from elmbench.cli import cli
from elmbench.config import ElmConfig, get_config
from elmbench.errors import ElmbenchError
from elmbench.records import AccuracyRecord, read_run

Record = dict[str, Any]

DATA = Path(__file__).parent / "data" / "evaldata"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ELMBENCH_DATA": None}
# Valid ranges of the values of each metric (fractions).
RANGES = {"acc": (0.0, 1.0), "acc_norm": (0.0, 1.0), "pct_stereotype": (0.0, 1.0)}
LIMIT = 3


def records_of(run: Path) -> list[dict[str, Any]]:
    """A run's accuracy records as dicts (their fields), in order."""
    return [asdict(r) for r in read_run(run).of(AccuracyRecord)]


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
        "--data-dir", str(DATA), "--limit", str(LIMIT), "--eval-batch-size", "4", "--out", str(out),
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
    meta, records = read_run(run).meta, records_of(run)
    assert meta.kind == "accuracy" and meta.finished_utc is not None
    assert meta.spec["suite"] == "llm360" and meta.spec["limit"] == LIMIT
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
        # Each document's shared prefix once: fewer tokens computed than the inputs hold whole.
        assert r["share_prefix"] is True and r["batch_size"] == 4
        assert r["input_tokens"] >= r["computed_tokens"] >= r["forwards"], label
        assert r["padded_tokens"] >= r["computed_tokens"]
        assert r["input_tokens_per_s"] == pytest.approx(r["input_tokens"] / r["eval_s"])
        assert r["wall_s"] >= r["eval_s"] > 0
    # Records of one task share its speed; a choice per request (two per PIQA question).
    assert by["PIQA", "acc"]["requests"] == by["PIQA", "acc_norm"]["requests"] == 2 * LIMIT
    assert by["ARC-c", "acc"]["requests"] >= 3 * LIMIT
    # 0-shot PIQA fits the tiny model's 256 tokens: each question's context is computed once.
    # (5-shot MMLU is cut from the left, each choice's input at another token: nothing shared.)
    assert by["PIQA", "acc"]["computed_tokens"] < by["PIQA", "acc"]["input_tokens"]
    # The JSON output: the summary of the suite with the same measured values, and the records.
    out = json.loads(result.stdout)
    assert out["run_dir"] == str(run) and len(out["records"]) == len(records)
    header, rows, notes = (out["summaries"]["naive"][k] for k in ("header", "rows", "notes"))
    assert header == ["", "ARC-c*", "CrowS-Pairs", "MMLU (1/57 subjects)", "PIQA*", "TruthfulQA",
                      "WinoGrande", "Average"]  # fmt: skip
    measured = dict(zip(header, next(r for r in rows if r[0] == "measured (acc*)"), strict=True))
    assert measured["MMLU (1/57 subjects)"] == f"{by['MMLU', 'acc']['value_pct']:.2f}"
    assert any("RANDOM WEIGHTS" in n for n in notes)
    assert "no published values: this suite has none for tiny (test model)" in notes


def test_mmlu_subset_is_counted_and_noted(llm360: tuple[Result, Path]) -> None:
    result, run = llm360
    (mmlu,) = [r for r in records_of(run) if r["label"] == "MMLU"]
    assert mmlu["subjects"] == 1 and mmlu["subjects_total"] == 57  # the samples hold one subject
    assert all(r["subjects"] is None for r in records_of(run) if r["label"] != "MMLU")
    notes = json.loads(result.stdout)["summaries"]["naive"]["notes"]
    assert (
        "MMLU: 1 of the 57 subjects evaluated (those in the data folder); the published value "
        "covers all 57, so its delta is not comparable"
    ) in notes


def test_few_shot_examples_from_the_evaluation_split_are_noted(
    llm360: tuple[Result, Path],
) -> None:
    result, run = llm360
    sources = {r["label"]: r["few_shot_source"] for r in records_of(run)}
    # Stock ARC-c and WinoGrande draw few-shot examples from a training split the samples lack;
    # CrowS-Pairs (test only) and MMLU (dev) use the split stock lm-eval uses; the rest are 0-shot.
    assert sources == {
        "ARC-c": "evaluation split (no train split offline)",
        "WinoGrande": "evaluation split (no train split offline)",
        "CrowS-Pairs": "stock lm-eval split", "MMLU": "stock lm-eval split",
        "PIQA": "stock lm-eval split", "TruthfulQA": "stock lm-eval split",
    }  # fmt: skip
    notes = json.loads(result.stdout)["summaries"]["naive"]["notes"]
    assert (
        "few-shot examples of ARC-c, WinoGrande came from the evaluation split (the local data has "
        "no training split; lm-eval leaves the current document out); the paper drew them from "
        "the training split"
    ) in notes


def test_suite_file_published_values_and_norm_agreement(
    tmp_path: Path, sp_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []  # the run may leave none of the temporary folders it makes
    mkdtemp = tempfile.mkdtemp

    def spy(*args: Any, **kwargs: Any) -> str:
        path = mkdtemp(*args, **kwargs)
        made.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
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
    records = records_of(only_run(out))
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
    assert "paper row: tiny (test model) (chosen by --model)" in text
    assert {r["paper_model_from"] for r in records} == {"--model"}
    assert "[2/2] BoolQ (boolq, 0-shot, norm fused) ..." in result.stderr  # progress on stderr
    assert any("elmbench-tasks-" in m for m in made)  # the task overrides' folder...
    assert not any(Path(m).exists() for m in made)  # ...and every other one is gone


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
    meta, records = read_run(run).meta, records_of(run)
    assert len(meta.resumed) == 1 and "truncated last line" in meta.resumed[0]["notes"][0]
    want = {(r["label"], r["metric"]): r["value"] for r in records_of(finished)}
    assert {(r["label"], r["metric"]): r["value"] for r in records} == want
    (wino,) = [r for r in records if r["label"] == "WinoGrande"]
    assert wino["requests"] == 0  # every request came from lm-eval's cache in the run folder
    assert result.stdout.splitlines()[0].startswith("norm,row,ARC-c*,CrowS-Pairs,MMLU")
    # Settings given again must match the run's.
    refused = invoke("--resume", str(run), "--limit", "5")
    assert_one_line_error(refused, "its own settings; these differ", "--limit (run: 3, given: 5)")


# Clear errors, each before any run folder is made ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--allow-random"], ["no tokenizer given", "--tokenizer PATH"]),
        (["--allow-random", "--tokenizer", "/no/such/tokenizer.model"], ["does not exist"]),
        ([], ["'tiny' has no released weights", "--weights PATH", "--allow-random"]),
        (["--weights", "/no/such/ckpt"], ["weights path '/no/such/ckpt' does not exist"]),
        (
            ["--allow-random", "--tasks", "ARC-x"],
            ["suite 'zero_shot': unknown task 'ARC-x'", "Valid tasks: ARC-c,", "arc_challenge"],
        ),
        (["--allow-random", "--suite", "nope"], ["unknown suite 'nope'", "zero_shot"]),
        (["--allow-random", "--suite", "smoke"], ["not an accuracy suite", "llm360"]),
        (["--allow-random", "--norm", "naive,nope"], ["unknown torch norm 'nope'"]),
        (
            ["--allow-random", "--tasks", "HellaSwag"],
            ["task 'hellaswag' has no local data: expected", "hellaswag/validation.jsonl"],
        ),
        (
            ["--allow-random", "--tokenizer", "nobody/no-such-tokenizer"],
            ["tokenizer 'nobody/no-such-tokenizer' cannot be loaded", "--tokenizer PATH"],
        ),
        (
            ["--weights", "nobody/no-such-model"],
            ["weights 'nobody/no-such-model' cannot be had from the Hugging Face Hub",
             "--weights PATH"],
        ),
    ],
    ids=["no-tokenizer", "tokenizer-missing", "no-weights", "weights-missing", "unknown-task",
         "unknown-suite", "not-accuracy-suite", "unknown-norm", "task-data-missing",
         "tokenizer-hf-id-offline", "weights-hf-id-offline"],
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


def test_a_preset_alone_asks_the_hub_and_offline_names_the_two_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("--model", "1_1b", "--data-dir", str(DATA), "--out", str(tmp_path / "out"))
    assert_one_line_error(
        result,
        "weights 'apple/OpenELM-1_1B' cannot be had from the Hugging Face Hub",
        "--weights PATH (a local copy of apple/OpenELM-1_1B)",
        "--tokenizer PATH (LLaMA-2's tokenizer.model)",
    )
    assert not (tmp_path / "out").exists()


def test_the_hub_path_fetches_the_released_weights_and_the_papers_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_checkpoint: Any, sp_model: Path
) -> None:
    """`--model 270m` alone: the weights from apple/OpenELM-270M, the tokenizer from LLaMA-2's
    repository (the Hub itself is faked here: there is no network)."""
    from elmbench.accuracy import inputs, tokenizer
    from elmbench.config import get_config

    asked: list[str] = []
    folder = write_checkpoint(get_config("270m"), seed=1)

    def fake_download(repo: str, **kw: Any) -> str:
        asked.append(repo)
        return str(folder)

    def fake_tokenizer(spec: str | None) -> Any:
        asked.append(str(spec))
        return tokenizer.SentencePieceTokenizer(sp_model)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    monkeypatch.setattr(tokenizer, "load_tokenizer", fake_tokenizer)
    monkeypatch.setattr(inputs, "hub_offline", lambda: False)
    result = invoke(
        "--model", "270m", "--data-dir", str(DATA), "--tasks", "PIQA", "--limit", "2",
        "--out", str(tmp_path), "--format", "json", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert asked[0] == "apple/OpenELM-270M" and set(asked[1:]) == {"meta-llama/Llama-2-7b-hf"}
    record = json.loads(result.stdout)["records"][0]
    assert record["paper_model"] == "OpenELM-270M" and record["random_weights"] is False


def test_whole_requests_and_auto_batches_give_the_same_values(
    tmp_path: Path, sp_model: Path
) -> None:
    """Packed rows (default), each request whole, and --batch-size auto: the same metrics."""
    values, speed = {}, {}
    for name, extra in {
        "packed": [],
        "whole": ["--no-share-prefix"],
        "auto": ["--eval-batch-size", "auto"],
    }.items():
        out = tmp_path / name
        args = [*common(sp_model, out), "--tasks", "ARC-c,PIQA,WinoGrande", *extra]
        result = invoke(*args, "--suite", "zero_shot", "--format", "json")
        assert result.exit_code == 0, result.output
        records = records_of(only_run(out))
        values[name] = {(r["label"], r["metric"]): r["value"] for r in records}
        speed[name] = {r["label"]: r for r in records}
    assert values["packed"] == values["whole"] == values["auto"]
    for label, r in speed["whole"].items():
        assert r["share_prefix"] is False and r["computed_tokens"] == r["input_tokens"]
        assert speed["packed"][label]["input_tokens"] == r["input_tokens"]
        assert speed["packed"][label]["computed_tokens"] < r["computed_tokens"]
        auto = speed["auto"][label]
        assert auto["batch_size"] == "auto" and auto["forwards"] == 1  # 3 documents: one batch


@pytest.mark.parametrize("value", ["0", "many", "-2"])
def test_batch_size_must_be_a_positive_number_or_auto(
    value: str, tmp_path: Path, sp_model: Path
) -> None:
    result = invoke(*common(sp_model, tmp_path / "out")[:-4], "--eval-batch-size", value)
    assert_one_line_error(result, f"--eval-batch-size: a positive integer or auto, found {value}")


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


# A checkpoint folder: which paper model it is, its identity, dtype and tokenizer folder -------


def save_checkpoint(cfg: ElmConfig, folder: Path) -> Path:
    """Seeded random weights of `cfg` written as an HF folder (config.json + safetensors)."""
    from elmbench.checkpoints.hf import save_hf
    from elmbench.checkpoints.torch_load import load_state

    cfg, state, _ = load_state(cfg, seed=3)
    return save_hf(cfg, state, folder)


def custom_tiny() -> ElmConfig:
    """The tiny architecture with another context length: no preset has it."""
    return dataclasses.replace(get_config("tiny"), name="custom", max_context_length=128)


@pytest.fixture(scope="module")
def checkpoint_run(
    tmp_path_factory: pytest.TempPathFactory, sp_model: Path
) -> tuple[Result, Path, Path, Path]:
    """PIQA from a tiny-architecture HF folder, bf16 on torch, the tokenizer given as a folder."""
    root = tmp_path_factory.mktemp("ckpt")
    weights = save_checkpoint(get_config("tiny"), root / "tiny-ckpt")
    tokenizer = root / "llama2"
    tokenizer.mkdir()
    shutil.copy(sp_model, tokenizer / "tokenizer.model")
    result = invoke(
        "--weights", str(weights), "--tokenizer", str(tokenizer), "--dtype", "bfloat16",
        "--backend", "torch", "--data-dir", str(DATA), "--tasks", "PIQA", "--limit", "2",
        "--out", str(root / "out"), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result, only_run(root / "out"), weights, tokenizer


def test_checkpoint_run_records_weights_dtype_and_tokenizer(
    checkpoint_run: tuple[Result, Path, Path, Path],
) -> None:
    _, run, weights, tokenizer = checkpoint_run
    records = records_of(run)
    digest = hashlib.sha256()  # the folder's files in name order, each name then its bytes
    for name in ("config.json", "model.safetensors"):
        digest.update(name.encode())
        digest.update((weights / name).read_bytes())
    assert {r["metric"] for r in records} == {"acc", "acc_norm"}
    for r in records:
        assert r["weights"] == str(weights) and r["weights_sha256"] == digest.hexdigest()
        assert r["random_weights"] is False and r["model"] == "tiny-ckpt"
        assert r["dtype"] == "bfloat16" and r["backend"] == "torch"
        assert r["tokenizer"] == f"sentencepiece:{tokenizer / 'tokenizer.model'}"


def test_checkpoint_without_model_gets_its_paper_model_by_architecture(
    checkpoint_run: tuple[Result, Path, Path, Path],
) -> None:
    result, run, _, _ = checkpoint_run
    for r in records_of(run):
        assert r["paper_model"] == "tiny (test model)" and r["paper_model_from"] == "architecture"
    notes = json.loads(result.stdout)["summaries"]["naive"]["notes"]
    assert "no published values: this suite has none for tiny (test model)" in notes
    assert not any("RANDOM WEIGHTS" in n for n in notes)


def test_custom_architecture_has_no_paper_model_and_says_so(tmp_path: Path, sp_model: Path) -> None:
    weights = save_checkpoint(custom_tiny(), tmp_path / "custom")
    out = tmp_path / "out"
    result = invoke(
        "--weights", str(weights), "--tokenizer", str(sp_model), "--data-dir", str(DATA),
        "--tasks", "PIQA", "--limit", "2", "--out", str(out), "--format", "markdown",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for r in records_of(only_run(out)):
        assert r["paper_model"] == "" and r["paper_model_from"] == "no preset matches"
        assert r["published_pct"] is None
    assert (
        "no published values: the checkpoint's architecture matches no OpenELM model "
        "(a custom architecture)"
    ) in result.stdout
    assert "| paper | - | - |" in result.stdout  # PIQA and the average


@pytest.mark.parametrize(
    ("cfg", "model", "needles"),
    [
        (custom_tiny(), "tiny", ["--model tiny: the checkpoint is not tiny (test model) "
                                 "(max_context_length 128, not 256)", "matches no OpenELM model"]),
        (get_config("tiny"), "270m", ["--model 270m: the checkpoint is not OpenELM-270M "
                                      "(num_layers 3, not 16)", "matches tiny (test model) "
                                      "(--model tiny)"]),
    ],
    ids=["custom", "other-preset"],
)  # fmt: skip
def test_model_that_is_not_the_checkpoint_is_a_clear_error(
    cfg: ElmConfig, model: str, needles: list[str], tmp_path: Path, sp_model: Path
) -> None:
    weights = save_checkpoint(cfg, tmp_path / "ckpt")
    result = invoke(
        "--model", model, "--weights", str(weights), "--tokenizer", str(sp_model),
        "--data-dir", str(DATA), "--tasks", "PIQA", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "out").exists()


# The paper model of a checkpoint, decided without loading weights ------------------------------


def checkpoint_cfg(size: str, **changes: Any) -> ElmConfig:
    """A preset's config as read back from a release-style config.json (no paper name in it)."""
    data = {k: v for k, v in get_config(size).to_hf().items() if k != "elmbench_name"}
    cfg = ElmConfig.from_hf(json.loads(json.dumps(data)), name="folder")
    assert cfg.official_name == ""
    return dataclasses.replace(cfg, **changes)


@pytest.mark.parametrize(
    ("names", "want", "source"),
    [
        ((), "OpenELM-1_1B", "architecture"),
        (("/ckpts/OpenELM-1_1B",), "OpenELM-1_1B", "architecture"),
        (("/ckpts/openelm-1_1b-INSTRUCT",), "OpenELM-1_1B-Instruct", "architecture + name"),
        (("apple/OpenELM-1_1B-Instruct", "/cache/snap/abc"), "OpenELM-1_1B-Instruct",
         "architecture + name"),
    ],
    ids=["no-name", "base-path", "instruct-path", "instruct-hf-id"],
)  # fmt: skip
def test_paper_model_without_model_option(names: tuple[str, ...], want: str, source: str) -> None:
    from elmbench.accuracy.papermodel import PaperModel, paper_model

    assert paper_model(checkpoint_cfg("1_1b"), None, names) == PaperModel(want, source)


def test_paper_model_from_the_model_option_is_checked_against_the_checkpoint() -> None:
    from elmbench.accuracy.papermodel import PaperModel, paper_model

    cfg = checkpoint_cfg("1_1b")
    # The user's word picks the twin: same architecture, whatever the folder is called.
    assert paper_model(cfg, "1_1b-instruct", ["/ckpts/base"]) == PaperModel(
        "OpenELM-1_1B-Instruct", "--model"
    )
    assert paper_model(cfg, "OpenELM-1_1B", ["/x/instruct"]).name == "OpenELM-1_1B"
    with pytest.raises(ElmbenchError) as info:
        paper_model(cfg, "270m")
    assert str(info.value) == (
        "--model 270m: the checkpoint is not OpenELM-270M (num_layers 28, not 16); its "
        "architecture matches OpenELM-1_1B and OpenELM-1_1B-Instruct "
        "(--model 1_1b or 1_1b-instruct)"
    )


def test_paper_model_of_a_custom_architecture_is_none() -> None:
    from elmbench.accuracy.papermodel import PaperModel, paper_model

    custom = checkpoint_cfg("270m", rope_freq_constant=500000)
    assert paper_model(custom, None, ["OpenELM-270M-Instruct"]) == PaperModel(
        "", "no preset matches"
    )
    with pytest.raises(ElmbenchError, match="matches no OpenELM model"):
        paper_model(custom, "270m")


def test_name_or_path_in_config_json_picks_the_instruct_twin(tmp_path: Path) -> None:
    from elmbench.accuracy.papermodel import (
        PaperModel,
        checkpoint_config,
        checkpoint_names,
        paper_model,
    )

    folder = tmp_path / "snapshot"
    folder.mkdir()
    data = {k: v for k, v in get_config("270m").to_hf().items() if k != "elmbench_name"}
    data["_name_or_path"] = "apple/OpenELM-270M-Instruct"
    (folder / "config.json").write_text(json.dumps(data))
    names = checkpoint_names(None, str(folder))
    assert names == [str(folder), "apple/OpenELM-270M-Instruct"]
    cfg = checkpoint_config(str(folder))
    assert cfg is not None and cfg.official_name == ""
    assert paper_model(cfg, None, names) == PaperModel(
        "OpenELM-270M-Instruct", "architecture + name"
    )
    del data["_name_or_path"]
    (folder / "config.json").write_text(json.dumps(data))
    assert paper_model(cfg, None, checkpoint_names(None, str(folder))).name == "OpenELM-270M"


# The summary table and norm agreement, from records built by hand ------------------------------


def rec(
    label: str, metric: str, value: float, published: float | None, **extra: Any
) -> AccuracyRecord:
    """One record of the summary's inputs."""
    fields: dict[str, Any] = {
        "model": "450m", "backend": "torch", "kernels": "stock", "dtype": "float32",
        "norm": "naive", "task": label.lower(), "metric": metric, "label": label,
        "suite": "test", "value": value / 100, "value_pct": value, "stderr_pct": None,
        "samples": 100, "shots": 0, "device": "cpu", "weights": "w", "random_weights": False,
        "tokenizer": "t", "lm_eval_version": "0.4.13", "published_pct": published,
        "paper_model": "OpenELM-450M", "paper_model_from": "--model",
    }  # fmt: skip
    return AccuracyRecord(**{**fields, **extra})


def test_summary_average_is_the_unweighted_mean_of_the_tasks() -> None:
    from elmbench.accuracy.summary import summary_table

    records = [
        rec("A", "acc", 20.0, 30.0, samples=10),
        rec("B", "acc", 50.0, 40.0, samples=1000),
        rec("C", "acc", 71.0, 50.0, samples=3),
    ]
    header, rows, notes = summary_table(records, "naive")
    # By hand: (20 + 50 + 71) / 3 = 47.00; paper (30 + 40 + 50) / 3 = 40.00. Weighted by the
    # sample counts the measured average would be 49.8.
    assert header == ["", "A", "B", "C", "Average"]
    assert rows == [
        ["paper", "30.00", "40.00", "50.00", "40.00"],
        ["measured", "20.00", "50.00", "71.00", "47.00"],
        ["delta", "-10.00", "10.00", "21.00", "7.00"],
    ]
    assert notes == ["paper row: OpenELM-450M (chosen by --model)"]


def test_paper_average_is_the_published_figure_of_the_whole_suite() -> None:
    from elmbench.accuracy.summary import summary_table
    from elmbench.cli.accuracy import load_accuracy_suite

    suite = load_accuracy_suite("openllm")
    model = "OpenELM-450M"  # published average 41.50; the mean of its rounded task values 41.49
    records = [
        rec(t.label, metric, t.published[model] + 1.0, t.published[model],
            metric_known=t.metric_known)
        for t in suite.tasks
        for metric in t.metrics
    ]  # fmt: skip
    _, rows, _ = summary_table(records, "naive", suite)
    assert rows[0][0] == "paper" and rows[0][-1] == "41.50"
    measured = next(r for r in rows if r[0] == "measured (acc*)")
    assert measured[-1] == "42.49"  # 41.494 + 1
    assert next(r for r in rows if r[0] == "delta (acc*)")[-1] == "0.99"  # 42.494 - 41.50
    # A subset of the tasks: the paper's figure no longer applies, the row's mean does.
    subset = [r for r in records if r.label != "MMLU"]
    _, rows, _ = summary_table(subset, "naive", suite)
    want = sum(t.published[model] for t in suite.tasks if t.label != "MMLU") / 4
    assert rows[0][-1] == f"{want:.2f}"


def test_summary_notes_unknown_metric_and_crows_pairs_inference() -> None:
    from elmbench.accuracy.summary import summary_table

    records = [
        rec("ARC-c", "acc", 25.0, 27.56, metric_known=False),
        rec("ARC-c", "acc_norm", 28.0, 27.56, metric_known=False),
        rec("CrowS-Pairs", "pct_stereotype", 60.0, 66.0),
        rec("MMLU", "acc", 26.0, 26.01, subjects=57, subjects_total=57),
    ]
    header, rows, notes = summary_table(records, "naive")
    assert header == ["", "ARC-c*", "CrowS-Pairs", "MMLU", "Average"]  # all 57: no count
    assert [r[0] for r in rows] == [
        "paper", "measured (acc*)", "delta (acc*)", "measured (acc_norm*)", "delta (acc_norm*)",
    ]  # fmt: skip
    assert rows[3][1:] == ["28.00", "60.00", "26.00", f"{(28 + 60 + 26) / 3:.2f}"]
    assert notes == [
        "* the paper's choice between acc and acc_norm is not published in a readable form: "
        "measured rows show acc and acc_norm for these tasks, each with its average",
        "CrowS-Pairs is compared as pct_stereotype x 100 (an inference from the published values, "
        "not a stated fact); lower is less biased",
        "paper row: OpenELM-450M (chosen by --model)",
    ]


def test_norm_variants_that_differ_beyond_the_standard_error_disagree(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from elmbench.accuracy.summary import norms_agree
    from elmbench.cli.accuracy import _report, load_accuracy_suite

    speed = {"shots": 0, "requests": 8, "forwards": 2}
    records = [
        rec("BoolQ", "acc", 60.0, None, norm="naive", stderr_pct=1.0, **speed),
        rec("BoolQ", "acc", 63.0, None, norm="fused", stderr_pct=1.5, **speed),
        rec("PIQA", "acc", 55.0, None, norm="naive", stderr_pct=2.0, **speed),
        rec("PIQA", "acc", 55.5, None, norm="fused", stderr_pct=2.0, **speed),
    ]
    assert norms_agree(records) == (False, 3.0, ["fused", "naive"])  # 3 points > 1.5
    assert norms_agree(records[2:]) == (True, 0.5, ["fused", "naive"])
    _report(records, load_accuracy_suite("zero_shot"), "markdown", Path("run"))
    assert (
        "norm variants fused, naive DISAGREE: largest gap 3.00 points (beyond the tasks' "
        "standard errors)"
    ) in capsys.readouterr().out


def test_every_model_dtype_and_norm_combination_is_evaluated_with_its_own_cache(
    tmp_path: Path, sp_model: Path
) -> None:
    """Lists take the same form as in throughput; each combination is answered by its own model,
    not from another combination's request cache (lm-eval keys answers by request text)."""
    args = [*common(sp_model, tmp_path), "--tasks", "PIQA", "--dtype", "fp32,bf16",
            "--norm", "naive", "--norm", "fused", "--format", "json"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    records = records_of(only_run(tmp_path))
    combos = {(r["dtype"], r["norm"]) for r in records}
    assert combos == {(d, n) for d in ("float32", "bfloat16") for n in ("naive", "fused")}
    assert all(r["requests"] == 2 * LIMIT for r in records)  # none came from a cache


def test_a_task_that_fails_is_recorded_and_the_run_goes_on(
    tmp_path: Path, sp_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from elmbench.accuracy import runner
    from elmbench.records import FailureRecord

    real = runner.run_accuracy

    def flaky(suite: Any, plan: Any, **kw: Any) -> Any:
        if plan.tasks == ("arc_challenge",):
            raise RuntimeError("out of memory")
        return real(suite, plan, **kw)

    monkeypatch.setattr(runner, "run_accuracy", flaky)
    result = invoke(*common(sp_model, tmp_path), "--tasks", "ARC-c,PIQA")
    assert result.exit_code == 1 and "failed (RuntimeError: out of memory)" in result.stderr
    run = read_run(only_run(tmp_path))
    failures = run.of(FailureRecord)
    assert {f.params["metric"] for f in failures} == {"acc", "acc_norm"}
    assert {r.task for r in run.of(AccuracyRecord)} == {"piqa"}  # the next task still ran
