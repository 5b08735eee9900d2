"""The `triton` norm variant: its kernels equal naive under Triton's CPU interpreter (in a child
process), the model's fused add + norm path equals the released block, and without CUDA it fails
clearly."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from elmbench.cli import cli
from elmbench.config import get_config
from elmbench.errors import UnavailableError
from elmbench.models import openelm_torch
from elmbench.norms import get_norm, parse_norms
from elmbench.norms.triton_norms import TRITON_HINT, triton_available

INTERPRETED = Path(__file__).with_name("triton_interpreted.py")


def test_triton_kernels_under_the_interpreter() -> None:
    """tests/triton_interpreted.py in a child with TRITON_INTERPRET=1 (set before Triton loads)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed (pip install 'elmbench[triton]')")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(INTERPRETED)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # Every case ran, none skipped: 18 shapes x 3 dtypes, and four more.
    summary = done.stdout.strip().splitlines()[-1]
    assert re.match(r"58 passed in ", summary), summary


# Without CUDA or Triton --------------------------------------------------------------------------


@pytest.fixture
def no_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the variant is available")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")


@pytest.mark.usefixtures("no_cuda")
def test_variant_without_cuda_is_a_clear_error() -> None:
    status = get_norm("triton").available()
    assert not status.ok and "need a CUDA device" in status.reason
    with pytest.raises(UnavailableError, match=r"norm 'triton' \(torch\) is not available") as info:
        get_norm("triton").build(64, 1e-6)
    assert "need a CUDA device" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UnavailableError, match="need a CUDA device"):
        openelm_torch.OpenELM(get_config("tiny"), norm="triton")
    assert "triton" not in [v.name for v in parse_norms("all")]


def test_variant_without_triton_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)  # import fails
    monkeypatch.setitem(sys.modules, "triton.language", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    status = triton_available()
    assert not status.ok and "Triton is not installed" in status.reason
    assert status.hint == TRITON_HINT and "elmbench[triton]" in status.hint


@pytest.mark.usefixtures("no_cuda")
def test_elmbench_norms_lists_triton_with_its_reason() -> None:
    result = CliRunner().invoke(cli, ["norms", "--backend", "torch", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["triton"]["available"] is False
    assert rows["triton"]["reason"] == triton_available().reason and rows["triton"]["hint"]
    table = CliRunner().invoke(cli, ["norms", "--backend", "torch"], terminal_width=200).stdout
    assert "triton" in table and "need a CUDA device" in table
