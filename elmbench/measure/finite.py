"""The check that a measured model computes finite logits, made once per case outside the timed
region: NaN weights or a dtype that overflows fail the case with a reason instead of producing
speeds of garbage (greedy decoding over NaN logits still yields tokens, all of them 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from elmbench.errors import NonFiniteError


def check_finite_logits(backend: Any, tokens: np.ndarray, generated: int) -> None:
    """One untimed forward over `tokens` (1, T), a prompt and the tokens generated after it but
    the last: the logits at its last `generated` positions (those that chose each generated
    token) must be finite, else NonFiniteError."""
    (rows,) = backend.logprob_rows(tokens[:1], [tokens.shape[1]], [generated])  # (generated, V)
    bad = ~np.isfinite(rows).all(axis=-1)  # (generated,)
    if bad.any():
        first = tokens.shape[1] - generated + int(np.argmax(bad))
        dtype = getattr(getattr(backend, "spec", None), "dtype", "the dtype")
        raise NonFiniteError(
            f"non-finite logits (NaN or infinity) at {int(bad.sum())} of the {generated} "
            f"positions that chose the generated tokens, the first at position {first}: the model "
            f"computes no numbers here (weights with NaN, or {dtype} overflowing), so the case "
            "has no figures"
        )
