"""Derived figures: FLOP and byte counts checked against direct counts on built models."""

from __future__ import annotations

import torch

from elmbench.config import get_config
from elmbench.measure.figures import ModelFacts, decode_bytes, forward_flops, share
from elmbench.models.comparison import get_comparison


def test_linear_params_equal_a_built_models_matmul_weights() -> None:
    from elmbench.checkpoints.torch_load import load_model

    model, _ = load_model("tiny")
    facts = ModelFacts.of(model.config)
    matmul = sum(
        p.numel()
        for n, p in model.named_parameters()
        if p.ndim == 2 and "token_embeddings" not in n
    )
    assert facts.linear_params == matmul
    assert facts.head_params == model.transformer.token_embeddings.weight.numel()
    assert facts.num_params == model.num_parameters()


def test_forward_flops_match_a_flop_counter_on_the_matmuls() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from elmbench.checkpoints.torch_load import load_model

    model, _ = load_model("tiny")
    facts = ModelFacts.of(model.config)
    tokens = torch.randint(0, 512, (2, 9))
    with FlopCounterMode(display=False) as counter:
        model(tokens)
    # On CPU the counter sees the linear layers and the head as aten.mm (SDPA is not counted
    # there), so it must equal our count minus the causal attention term, computed by hand.
    counted = counter.get_flop_counts()["Global"]
    assert set(map(str, counted)) == {"aten.mm"}
    mine = forward_flops(facts, batch=2, new_tokens=9)
    causal_pairs = sum(range(1, 10))  # query i sees i + 1 keys
    attention = 2 * sum(2 * 2 * w * causal_pairs for w in facts.attn_widths)
    assert counter.get_total_flops() == mine - attention
    # A cached step after 9 tokens: one new token sees 10 keys; the head runs on one row.
    step = forward_flops(facts, batch=1, new_tokens=1, context_before=9, logits_rows=1)
    assert step == 2 * (facts.linear_params + facts.head_params) + sum(
        2 * 2 * w * 10 for w in facts.attn_widths
    )


def test_decode_bytes_add_weights_and_the_growing_cache() -> None:
    facts = ModelFacts.of(get_config("270m"))
    assert facts.kv_elems_per_token * 2 == 16128  # published bf16 KV bytes per token
    one = decode_bytes(
        1000, facts, batch=1, prompt_tokens=10, decode_steps=1, kv_bytes_per_element=2
    )
    assert one == 1000 + 16128 * 11
    three = decode_bytes(
        1000, facts, batch=2, prompt_tokens=10, decode_steps=3, kv_bytes_per_element=4
    )
    assert three == 3000 + 2 * facts.kv_elems_per_token * 4 * (11 + 12 + 13)


def test_olmo_facts_and_shares() -> None:
    facts = ModelFacts.of(get_comparison("olmo-1b"))
    assert facts.num_norms == 33
    assert facts.num_params == 1_176_764_416
    assert share(50.0, 100.0) == 0.5
    assert share(None, 100.0) is None and share(50.0, None) is None
