"""Compile modes: torch.compile (inductor), AOTInductor and mx.compile match eager; the rest are
clear errors."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from elmbench.backends import ModelSpec, create_backend
from elmbench.backends.torch_aoti import compile_package
from elmbench.engine import cpu_kernels
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


def test_aoti_decode_generates_what_eager_does_on_the_models_own_cache() -> None:
    eager = create_backend("torch", ModelSpec(model="tiny", seed=3))
    aoti = create_backend("torch", ModelSpec(model="tiny", seed=3, compile="aoti"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens = aoti.generate(PROMPT, 4)
    np.testing.assert_array_equal(tokens, eager.generate(PROMPT, 4))
    # torch's deprecation warnings about its own internals do not reach the user
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    assert aoti.describe()["compile_details"]["decode"].startswith("AOTInductor")
    # The library writes the model's own KV cache (user-managed constants, not a copy): the
    # decode steps' positions 7..9 hold exactly what eager decode wrote there.
    caches = [b.model.transformer.layers[0].attn.cache for b in (aoti, eager)]
    assert caches[0].k[:, :, 7:10].abs().sum() > 0
    np.testing.assert_allclose(caches[0].k[:, :, 7:10], caches[1].k[:, :, 7:10], atol=1e-5)
    # setup() for another batch size replaces the cache: the step is built again for it.
    np.testing.assert_array_equal(aoti.generate(PROMPT[:1], 3), eager.generate(PROMPT[:1], 3))


def test_aoti_frees_the_model_with_the_backend_and_runs_bf16() -> None:
    import gc
    import weakref

    eager = create_backend("torch", ModelSpec(model="tiny", seed=3, dtype="bf16"))
    aoti = create_backend("torch", ModelSpec(model="tiny", seed=3, dtype="bf16", compile="aoti"))
    np.testing.assert_array_equal(aoti.generate(PROMPT, 3), eager.generate(PROMPT, 3))
    weight = weakref.ref(next(aoti.model.parameters()))
    del aoti
    gc.collect()
    assert weight() is None  # the library kept no reference to the weights


@pytest.mark.usefixtures("gemv_kernel")
def test_aoti_calls_the_kernels_through_their_c_shims(tmp_path: Path) -> None:
    if not cpu_kernels.aoti_c_shims():
        pytest.skip("the ops' C++ binding did not build here")

    class Step(nn.Module):
        def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return cpu_kernels.gemv(x, w) + 1.0

    x, w = torch.randn(1, 64), torch.randn(40, 64)
    exported = torch.export.export(Step(), (x, w))
    package = compile_package(exported, tmp_path / "step.pt2", engine=True)
    with zipfile.ZipFile(package) as archive:
        libraries = [archive.read(n) for n in archive.namelist() if n.endswith(".so")]
    # the generated library names the shim (a direct call), not only the proxy executor
    assert any(b"aoti_torch_cpu_gemv" in library for library in libraries)
    (out,) = torch._inductor.aoti_load_package(package).loader.boxed_run([x, w])
    np.testing.assert_allclose(out, F.linear(x, w) + 1.0, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("elements", "engine", "parallel"),
    [(8192, True, False), (1 << 18, True, True), (8192, False, True)],
)
def test_aoti_runs_decode_sized_generated_kernels_on_one_thread_with_the_engine(
    tmp_path: Path, elements: int, engine: bool, parallel: bool
) -> None:
    class Step(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.silu(x) * x + 1.0

    x = torch.randn(1, elements)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # inductor parallelises for the threads torch has
    try:
        exported = torch.export.export(Step(), (x,))
        package = compile_package(exported, tmp_path / "step.pt2", engine=engine)
    finally:
        torch.set_num_threads(saved)
    with zipfile.ZipFile(package) as archive:
        (source,) = [archive.read(n) for n in archive.namelist() if n.endswith(".kernel.cpp")]
    # with the engine a decode step's few thousand elements stay on one thread, large kernels
    # still split; stock AOTInductor keeps inductor's default and splits both
    assert (b"#pragma omp parallel" in source) is parallel
    (out,) = torch._inductor.aoti_load_package(package).loader.boxed_run([x])
    torch.testing.assert_close(out, F.silu(x) * x + 1.0)


def test_aoti_off_the_cpu_is_a_clear_error() -> None:
    from elmbench.backends.torch_compile import check_compile_mode

    with pytest.raises(UnavailableError, match="AOTInductor on the CPU only"):
        check_compile_mode("aoti", torch.device("cuda"))


def test_decode_guard_filter_keeps_inputs_and_drops_parameters() -> None:
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


def test_cudagraphs_decode_compiles_with_its_options_on_the_cpu() -> None:
    """The step CUDA graphs would replay, traced and compiled here (inductor skips the graphs on
    the CPU): the options are valid and the tokens are eager's. tests/test_cuda.py runs it on CUDA.
    """
    from torch._dynamo.utils import counters

    from elmbench.backends.torch_compile import compile_steps
    from elmbench.checkpoints.torch_load import load_model

    model, _ = load_model("tiny", seed=3)
    eager = create_backend("torch", ModelSpec(model="tiny", seed=3))
    steps = compile_steps(model, "cudagraphs")
    assert steps.details["decode"].startswith("inductor + CUDA graphs, fullgraph, static shapes")
    model.setup_cache(2, 10)
    counters.clear()
    with torch.inference_mode():
        tokens = [steps.prefill(torch.as_tensor(PROMPT))]
        for p in range(7, 9):
            tokens.append(steps.decode(tokens[-1], torch.tensor([p])))
    got = torch.cat(tokens, dim=1).numpy()
    np.testing.assert_array_equal(got, eager.generate(PROMPT, 3))
    assert counters["inductor"]["cudagraph_skips"] >= 1  # only for want of a CUDA device


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
