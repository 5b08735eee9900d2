"""The backend seam: torch and MLX behind one interface, and jobs isolated in worker processes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from elmbench.backends import ModelSpec, create_backend
from elmbench.backends.isolate import Job, execute, run_isolated
from elmbench.errors import UnavailableError, UnknownNameError

TINY = ModelSpec(model="tiny", seed=3)


def _prompt(vocab: int, b: int = 2, t: int = 7) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, size=(b, t))


@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_generate_matches_full_forward_greedy(name: str) -> None:
    backend = create_backend(name, TINY)
    prompt = _prompt(backend.config.vocab_size)
    generated = backend.generate(prompt, 5)
    assert generated.shape == (2, 5)
    # Greedy by hand through full forwards (no cache): the cached path must pick the same tokens.
    seq = prompt
    for _ in range(5):
        t = seq.shape[1]
        last = backend.logprob_rows(seq, [t, t], [1, 1])  # (1, V) per row
        seq = np.concatenate([seq, np.stack([r[0].argmax() for r in last])[:, None]], axis=1)
    np.testing.assert_array_equal(generated, seq[:, prompt.shape[1] :])


def test_torch_and_mlx_score_the_same() -> None:
    torch_be, mlx_be = create_backend("torch", TINY), create_backend("mlx", TINY)
    prompt = _prompt(torch_be.config.vocab_size)
    lp_t, greedy_t = torch_be.score(prompt[:, :-1], prompt[:, 1:])
    lp_m, greedy_m = mlx_be.score(prompt[:, :-1], prompt[:, 1:])
    # fp32 on both sides with identical seeded weights: log-probs agree to float32 rounding.
    np.testing.assert_allclose(lp_t, lp_m, atol=1e-4)
    np.testing.assert_array_equal(greedy_t, greedy_m)


def test_logprob_rows_are_log_softmax_at_the_real_positions() -> None:
    backend = create_backend("torch", TINY)
    prompt = _prompt(backend.config.vocab_size, b=2, t=6)
    padded = prompt.copy()
    padded[1, 4:] = 0  # row 1 has 4 real tokens, then right padding
    rows = backend.logprob_rows(padded, [6, 4], [3, 2])
    assert [r.shape for r in rows] == [(3, 512), (2, 512)]
    np.testing.assert_allclose(np.exp(rows[0]).sum(-1), 1.0, rtol=1e-5)
    # Right padding cannot change earlier positions of a causal model.
    alone = backend.logprob_rows(prompt[1:, :4], [4], [2])[0]
    np.testing.assert_allclose(rows[1], alone, atol=1e-5)
    picked, greedy = backend.score(prompt[:, :-1], prompt[:, 1:])
    full = backend.logprob_rows(prompt[:, :-1], [5, 5], [5, 5])
    np.testing.assert_allclose(picked[0], full[0][np.arange(5), prompt[0, 1:]], atol=1e-6)
    assert greedy.shape == (2, 5)


def test_describe_and_memory() -> None:
    backend = create_backend("torch", TINY)
    info = backend.describe()
    assert info["backend"] == "torch" and info["model"] == "tiny"
    assert info["num_params"] == backend.config.num_params
    peak, how = backend.peak_memory_bytes()
    assert peak > 0 and how == "process_rss_peak_lifetime"  # not yet restarted
    backend.reset_peak_memory()
    if sys.platform.startswith("linux"):  # Linux restarts the RSS peak; the kind says so
        assert backend.peak_memory_bytes()[1] == "process_rss_peak"


def test_unknown_and_unavailable_backends() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'mlx'"):
        create_backend("mxl", TINY)
    with pytest.raises(UnavailableError, match="no CUDA GPU"):
        create_backend("torch", ModelSpec(model="tiny", device="cuda"))
    with pytest.raises(UnavailableError, match="Metal"):
        create_backend("mlx", ModelSpec(model="tiny", device="gpu"))
    with pytest.raises(UnavailableError, match="MLX feature"):
        create_backend("torch", ModelSpec(model="tiny", quantize=4))


def test_failed_case_becomes_a_record() -> None:
    job = Job(
        "elmbench.backends.tasks:generate",
        "torch",
        ModelSpec(model="tiny", norm="apex").to_dict(),
        {},
        "apex-case",
    )
    (record,) = list(execute(job))
    assert record["status"] == "failed" and record["case_id"] == "apex-case"
    assert "apex" in record["reason"] and "pip install apex" in record["reason"]


def test_torch_and_mlx_jobs_run_in_separate_processes_and_both_come_back() -> None:
    spec = TINY.to_dict()
    params = {"gen_tokens": 4, "prompt_tokens": 6, "prompt_seed": 1}
    jobs = [
        Job("elmbench.backends.tasks:generate", "torch", spec, params, "torch-case"),
        Job("elmbench.backends.tasks:generate", "mlx", spec, params, "mlx-case"),
    ]
    streamed: list[str] = []
    records = run_isolated(jobs, on_record=lambda r: streamed.append(r["case_id"]))
    assert [r["case_id"] for r in records] == ["torch-case", "mlx-case"] == streamed
    by_id = {r["case_id"]: r for r in records}
    assert all(r["status"] == "ok" for r in records), records
    assert by_id["torch-case"]["describe"]["backend"] == "torch"
    assert by_id["mlx-case"]["describe"]["backend"] == "mlx"
    assert "BLAS" in by_id["mlx-case"]["describe"]["blas"]  # which one ran is on the record
    assert by_id["torch-case"]["tokens"] == by_id["mlx-case"]["tokens"]
    assert by_id["torch-case"]["prompt_logprob_sum"] == pytest.approx(
        by_id["mlx-case"]["prompt_logprob_sum"], abs=1e-3
    )


def test_worker_that_dies_reports_failed_cases() -> None:
    job = Job("sys:exit", "torch", TINY.to_dict(), {}, "dies")  # SystemExit ends the worker
    (record,) = run_isolated([job])
    assert record["status"] == "failed" and "exited with code" in record["reason"]
