"""MLX's CPU products on OpenBLAS (elmbench's preloaded shim) instead of the Linux wheel's
reference BLAS: the same numbers, the BLAS named in records, and clear errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from elmbench.backends import ModelSpec, mlx_blas
from elmbench.backends.isolate import Job, run_isolated
from elmbench.errors import UnavailableError, UnknownNameError

pytest.importorskip("mlx.core")
LINUX_WHEEL = mlx_blas._bundled_reference()


@pytest.fixture(autouse=True)
def fresh_plan() -> Iterator[None]:
    mlx_blas.plan.cache_clear()
    yield
    mlx_blas.plan.cache_clear()


def _score(choice: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv(mlx_blas.ENV, choice)
    mlx_blas.plan.cache_clear()
    spec = ModelSpec(model="tiny", seed=5).to_dict()
    params = {"gen_tokens": 6, "prompt_tokens": 9, "prompt_seed": 2}
    (record,) = run_isolated([Job("elmbench.backends.tasks:generate", "mlx", spec, params, "c")])
    assert record["status"] == "ok", record
    return record


@pytest.mark.skipif(not LINUX_WHEEL, reason="the reference BLAS is the Linux mlx-cpu wheel's")
def test_openblas_worker_scores_like_the_bundled_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, shipped = _score("openblas", monkeypatch), _score("bundled", monkeypatch)
    assert fast["describe"]["blas"].startswith("OpenBLAS ")
    assert "elmbench's shim" in fast["describe"]["blas"]
    assert shipped["describe"]["blas"] == "reference BLAS bundled with the mlx-cpu wheel"
    assert fast["tokens"] == shipped["tokens"]
    assert fast["prompt_logprob_sum"] == pytest.approx(shipped["prompt_logprob_sum"], abs=1e-3)


def test_this_process_names_its_blas() -> None:
    blas = mlx_blas.describe()
    assert blas.startswith("OpenBLAS ") or "BLAS" in blas or "cblas_sgemm from" in blas


def test_unknown_choice_names_the_allowed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mlx_blas.ENV, "mkl")
    with pytest.raises(UnknownNameError, match="auto, bundled, openblas"):
        mlx_blas.plan()


def test_without_the_openblas_wheel(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "scipy_openblas32", None)  # import fails
    monkeypatch.setenv(mlx_blas.ENV, "openblas")
    with pytest.raises(UnavailableError, match="pip install scipy-openblas32"):
        mlx_blas.plan()
    monkeypatch.setenv(mlx_blas.ENV, "auto")
    mlx_blas.plan.cache_clear()
    fallback = mlx_blas.plan()
    assert fallback.preload is None and fallback.env() == {}
    mlx_blas.warn_if_bundled(fallback, loaded=False)
    err = capsys.readouterr().err
    if LINUX_WHEEL:
        assert err.count("\n") == 1 and "reference BLAS" in err and "scipy-openblas32" in err


def test_preload_keeps_what_the_user_preloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    blas = mlx_blas.BlasPlan("auto", "/cache/shim.so", "")
    assert blas.env() == {"LD_PRELOAD": "/cache/shim.so /opt/mine.so"}
    monkeypatch.setenv("LD_PRELOAD", "/cache/shim.so")
    assert blas.env() == {"LD_PRELOAD": "/cache/shim.so"}
    assert mlx_blas.BlasPlan("bundled", None, "").env() == {}


def test_commands_run_inside_another_process_never_restart_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mlx_blas, "_may_restart", False)
    monkeypatch.setattr(mlx_blas.os, "execve", lambda *a: pytest.fail("restarted"))
    mlx_blas.ensure_in_process()


def test_a_bad_choice_stops_a_throughput_run_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from elmbench.cli import cli

    monkeypatch.setenv(mlx_blas.ENV, "mkl")
    result = CliRunner().invoke(
        cli,
        ["throughput", "-m", "tiny", "--device", "mlx-cpu", "-p", "4", "-n", "2", "-q",
         "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code != 0
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "ELMBENCH_MLX_BLAS" in message and "auto, bundled, openblas" in message
