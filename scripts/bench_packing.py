"""Three ways to score multiple-choice requests on OpenELM-270M (torch, CPU), timed interleaved.

`whole`: every choice's input in its own row (lm-eval's HFLM and elmbench's plain path); `packed`:
one row per question, the context once and each choice's tokens after it under a tree mask (what
`elmbench accuracy` does); `prefix-kv`: the contexts through the KV cache first, the cache copied
to each choice, then the choices' tokens as a cached step. Shapes are uniform stand-ins for
ARC-Challenge or HellaSwag (context, choice lengths) so the three do the same useful work.

    python scripts/bench_packing.py [--docs 16] [--context 30] [--choice 6]

`--sweep` instead times packed forwards of 128 to 4,096 tokens (rows of --context tokens), which
is what `--batch-size auto` on a CPU is chosen from (`CPU_BATCH_TOKENS`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from elmbench.accuracy import packing
from elmbench.backends import ModelSpec, create_backend
from elmbench.models.openelm_torch import KVCache, OpenELM


def main() -> None:
    """Time the three methods on the same questions, interleaved; print medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=16, help="questions per batch")
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--context", type=int, default=30, help="context tokens")
    parser.add_argument("--choice", type=int, default=6, help="tokens per choice")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="tokens per forward instead")
    args = parser.parse_args()
    backend = create_backend("torch", ModelSpec(model="270m", seed=0))
    model: OpenELM = backend.model  # type: ignore[assignment]
    rng = np.random.default_rng(0)
    if args.sweep:
        sweep(model, rng, args.context, args.reps)
        return
    d, c, p, n = args.docs, args.choices, args.context, args.choice
    contexts = rng.integers(3, 32000, (d, p))
    choices = rng.integers(3, 32000, (d, c, n))
    inputs = [
        tuple(contexts[i].tolist() + choices[i, j].tolist()) for i in range(d) for j in range(c)
    ]

    @torch.inference_mode()
    def whole() -> None:
        for start in range(0, len(inputs), d):  # rows of `docs` inputs, as at the same batch size
            model(torch.tensor(inputs[start : start + d]))

    rows = [packing.pack(inputs[i * c : (i + 1) * c]) for i in range(d)]
    tokens, positions, mask = (torch.as_tensor(a) for a in packing.batch_arrays(rows))
    width = tokens.shape[1]
    scored = torch.tensor([b * width + k for b in range(d) for k in range(p - 1, width)])

    @torch.inference_mode()
    def packed() -> None:
        model.packed_logits(tokens, positions, mask, scored)

    @torch.inference_mode()
    def prefix_kv() -> None:
        model.setup_cache(d, p + n)
        model.prefill(torch.as_tensor(contexts), last_only=True)
        for layer in model.transformer.layers:  # the cache copied to each choice
            old = layer.attn.cache
            assert old is not None
            new = KVCache(d * c, layer.attn.n_kv, p + n, model.config.head_dim, old.k.dtype, "cpu")
            new.k.copy_(old.k.repeat_interleave(c, dim=0))
            new.v.copy_(old.v.repeat_interleave(c, dim=0))
            layer.attn.cache = new
        model(torch.as_tensor(choices.reshape(d * c, n)), torch.arange(p, p + n))

    methods: dict[str, Callable[[], None]] = {
        "whole": whole, "packed": packed, "prefix-kv": prefix_kv
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():
        fn()  # warm-up
    for _ in range(args.reps):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    tokens_computed = {
        "whole": d * c * (p + n), "packed": d * (p + c * n), "prefix-kv": d * p + d * c * n
    }  # fmt: skip
    for name, values in times.items():
        print(
            f"{name:10s} median {statistics.median(values):.3f} s (min {min(values):.3f}, "
            f"max {max(values):.3f}); tokens computed {tokens_computed[name]:,}"
        )


def sweep(model: OpenELM, rng: np.random.Generator, width: int, reps: int) -> None:
    """Tokens per second of packed forwards holding 128 to 4,096 tokens, interleaved."""
    cases = {}
    for total in (128, 256, 512, 1024, 2048, 4096):
        rows = [packing.pack([tuple(rng.integers(3, 32000, width).tolist())])] * (total // width)
        tokens, positions, mask = (torch.as_tensor(a) for a in packing.batch_arrays(rows))
        scored = torch.arange(0, tokens.numel(), 4)  # a quarter of the positions scored
        cases[tokens.numel()] = (tokens, positions, mask, scored)
    rates: dict[int, list[float]] = {n: [] for n in cases}
    with torch.inference_mode():
        for case in cases.values():
            model.packed_logits(*case)  # warm-up
        for _ in range(reps):
            for n, case in cases.items():
                start = time.perf_counter()
                model.packed_logits(*case)
                rates[n].append(n / (time.perf_counter() - start))
    for n, values in rates.items():
        print(
            f"{n:5d} tokens a forward: median {statistics.median(values):6.1f} tokens/s "
            f"({', '.join(f'{v:.0f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
