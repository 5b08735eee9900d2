"""Suite files: every shipped suite validates; each mistake is one line naming file, key, value."""

from __future__ import annotations

from pathlib import Path

import pytest

from elmbench.errors import UnknownNameError
from elmbench.suites import SuiteError, list_suites, load_suite, suite_path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", list_suites(), ids=lambda p: p.stem)
def test_every_shipped_suite_validates(path: Path) -> None:
    spec = load_suite(path)
    assert spec.name == path.stem and spec.kind in ("throughput", "norms", "accuracy")
    assert spec.description


def test_shipped_suites_exist() -> None:
    assert {p.stem for p in list_suites()} >= {
        "smoke",
        "throughput",
        "norms",
        "ci",
        "zero_shot",
        "openllm",
        "llm360",
    }


def test_values_are_parsed(tmp_path: Path) -> None:
    spec = load_suite(
        _write(
            tmp_path,
            "models: [tiny, 270m]\ndtypes: bf16\nprompt_tokens: 8\n"
            "compile: [none, inductor]\nmin_seconds: 0\n",
        )
    )
    assert spec.models == ("tiny", "270m") and spec.dtypes == ("bfloat16",)
    assert spec.prompt_tokens == (8,) and spec.compile == ("none", "inductor")
    assert spec.min_seconds == 0.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("promt_tokens: 5\n", "unknown key 'promt_tokens' (did you mean 'prompt_tokens'?)"),
        ("prompt_tokens: [5, -1]\n", "key 'prompt_tokens' must be a positive integer"),
        ("dtypes: float8\n", "key 'dtypes' must be dtypes from float32, bfloat16, float16"),
        ("compile: jit\n", "key 'compile' must be modes from none, inductor"),
        ("repetitions: 0\n", "key 'repetitions' must be an integer >= 1"),
        ("kind: speed\n", "key 'kind' must be one of throughput, norms"),
        ("models: [270n]\n", "key 'models': unknown model '270n'. Did you mean '270m'?"),
        ("models: [olmo-7b]\n", "Did you mean 'olmo-1b'? Valid models: 1_1b,"),  # comparisons too
        ("norms: [fusd]\n", "key 'norms': unknown norm 'fusd'. Did you mean 'fused'?"),
        ("- just\n- a list\n", "a suite is a mapping"),
        ("models: [\n", "not valid YAML"),
    ],
)
def test_each_mistake_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    text_out = str(info.value)
    assert message in text_out and str(path) in text_out and "\n" not in text_out


def test_missing_file_and_unknown_suite_name(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "none.yaml")
    with pytest.raises(UnknownNameError, match="Did you mean 'smoke'"):
        suite_path("smok")
    assert suite_path("smoke").name == "smoke.yaml"


PAPER_TASKS = {
    "zero_shot": {
        "arc_challenge": 0,
        "arc_easy": 0,
        "boolq": 0,
        "hellaswag": 0,
        "piqa": 0,
        "sciq": 0,
        "winogrande": 0,
    },
    "openllm": {
        "arc_challenge": 25,
        "hellaswag": 10,
        "mmlu": 5,
        "truthfulqa_mc2": 0,
        "winogrande": 5,
    },
    "llm360": {
        "arc_challenge": 25,
        "crows_pairs_english": 25,
        "hellaswag": 10,
        "mmlu": 5,
        "piqa": 0,
        "race": 0,
        "truthfulqa_mc2": 0,
        "winogrande": 5,
    },
}


@pytest.mark.parametrize("name", sorted(PAPER_TASKS))
def test_accuracy_suites_follow_the_paper(name: str) -> None:
    from elmbench.accuracy.suites import PAPER_MODELS, AccuracySuite

    suite = load_suite(suite_path(name))
    assert isinstance(suite, AccuracySuite)
    assert {t.task: t.shots for t in suite.tasks} == PAPER_TASKS[name]
    for task in suite.tasks:
        assert set(task.published) == set(PAPER_MODELS)
        unknown = task.task in ("arc_challenge", "arc_easy", "hellaswag", "piqa", "sciq")
        assert task.metric_known is not unknown
        assert task.metrics == (("acc", "acc_norm") if unknown else task.metrics)
    # The published averages are unweighted means of the (unrounded) task scores.
    for model in PAPER_MODELS:
        mean = sum(t.published[model] for t in suite.tasks) / len(suite.tasks)
        assert mean == pytest.approx(suite.published_average[model], abs=0.011)
    if name == "llm360":
        crows = suite.task("CrowS-Pairs")
        assert crows.metrics == ("pct_stereotype",) and "inference" in crows.metric_note
