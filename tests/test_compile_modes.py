"""Compile modes: torch.compile (inductor) and mx.compile match eager; the rest are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from elmbench.backends import ModelSpec, create_backend
from elmbench.errors import UnavailableError, UnknownNameError

PROMPT = np.random.default_rng(0).integers(0, 512, size=(2, 7))


def test_inductor_decode_generates_what_eager_does() -> None:
    eager = create_backend("torch", ModelSpec(model="tiny", seed=3))
    compiled = create_backend("torch", ModelSpec(model="tiny", seed=3, compile="inductor"))
    np.testing.assert_array_equal(compiled.generate(PROMPT, 6), eager.generate(PROMPT, 6))
    facts = compiled.describe()
    assert facts["compile"] == "inductor"
    assert facts["compile_details"]["decode"].startswith("fullgraph, static shapes")
    # Decode guards only its inputs: a new batch size (a new cache) is a new graph, not reuse.
    np.testing.assert_array_equal(compiled.generate(PROMPT[:1], 4), eager.generate(PROMPT[:1], 4))


def test_decode_guard_filter_keeps_inputs_and_drops_parameters() -> None:
    import torch
    from torch import nn

    from elmbench.backends.torch_compile import input_guards_only

    class Entry:
        def __init__(self, guard_type: str, value: object) -> None:
            self.guard_type, self.value = guard_type, value

    entries = [
        Entry("GLOBAL_STATE", None),
        Entry("SHAPE_ENV", None),
        Entry("TENSOR_MATCH", torch.zeros(2)),  # tokens, position, KV cache
        Entry("TENSOR_MATCH", nn.Parameter(torch.zeros(2))),  # weights
        Entry("ID_MATCH", nn.Linear(2, 2)),  # modules
    ]
    assert input_guards_only(entries) == [True, True, True, False, False]


def test_mx_compile_matches_eager_logits_and_tokens() -> None:
    import mlx.core as mx

    eager = create_backend("mlx", ModelSpec(model="tiny", seed=3))
    compiled = create_backend("mlx", ModelSpec(model="tiny", seed=3, compile="mx.compile"))
    assert compiled.describe()["compiled_parts"] and compiled.describe()["compile"] == "mx.compile"
    np.testing.assert_array_equal(compiled.generate(PROMPT, 6), eager.generate(PROMPT, 6))
    tokens = mx.array(PROMPT.astype(np.int32))
    for backend in (eager, compiled):
        backend.setup(2, 16)
    logits = [np.array(b.model.prefill(tokens)) for b in (eager, compiled)]
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)
    step = mx.array(PROMPT[:, :1].astype(np.int32))
    logits = [np.array(b.model.decode(step, 7)) for b in (eager, compiled)]
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)


def test_cudagraphs_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(UnavailableError, match="CUDA graphs need a CUDA device"):
        create_backend("torch", ModelSpec(model="tiny", compile="cudagraphs"))


@pytest.mark.parametrize(
    ("backend", "mode", "error", "match"),
    [
        ("torch", "mx.compile", UnavailableError, "it is an MLX compile mode"),
        ("torch", "jit", UnknownNameError, "inductor"),
        ("mlx", "inductor", UnavailableError, "--compile mx.compile"),
    ],
)
def test_compile_mode_of_another_backend_or_unknown(
    backend: str, mode: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        create_backend(backend, ModelSpec(model="tiny", compile=mode))
