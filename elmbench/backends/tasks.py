"""Small backend tasks runnable in a worker process: greedy generation and prompt scoring."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from elmbench.backends import ModelSpec, create_backend
from elmbench.backends.isolate import Job


def generate(job: Job) -> Iterator[dict[str, Any]]:
    """Greedy-generate from a seeded random prompt and score the prompt (a cross-backend check)."""
    backend = create_backend(job.backend, ModelSpec(**job.spec))
    p = job.params
    rng = np.random.default_rng(p.get("prompt_seed", 0))
    vocab = backend.config.vocab_size
    prompt = rng.integers(0, vocab, size=(p.get("batch_size", 1), p.get("prompt_tokens", 8)))
    start = time.perf_counter()
    tokens = backend.generate(prompt, p.get("gen_tokens", 4))
    elapsed = time.perf_counter() - start
    logp, _ = backend.score(prompt[:, :-1], prompt[:, 1:])
    yield {
        "status": "ok",
        "tokens": tokens.tolist(),
        "prompt_logprob_sum": float(logp.sum()),
        "generate_s": elapsed,
        "describe": backend.describe(),
    }
