"""Packed rows (a shared prefix computed once) against scoring each request whole, on torch and
MLX: the trie and its mask, the models' packed forward, and the adapter on every task shape."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from elmbench.accuracy import adapter, packing
from elmbench.accuracy.adapter import ElmLM, rows_that_fit
from elmbench.accuracy.tokenizer import SentencePieceTokenizer
from elmbench.backends import Backend, ModelSpec, create_backend

NO_MLX = importlib.util.find_spec("mlx") is None
BACKENDS = ["torch", pytest.param("mlx", marks=pytest.mark.skipif(NO_MLX, reason="no mlx"))]
# Per-request log-likelihood bound, packed against whole, per dtype: the same arithmetic on
# matrices of other shapes, so only the summation order inside the products differs.
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.25}

_backends: dict[tuple[str, str], Backend] = {}


def backend(name: str, dtype: str = "float32") -> Backend:
    """One tiny seeded model per backend and dtype for the whole module."""
    if (name, dtype) not in _backends:
        _backends[name, dtype] = create_backend(name, ModelSpec(model="tiny", seed=3, dtype=dtype))
    return _backends[name, dtype]


class Req:
    """The parts of lm-eval's Instance the adapter reads: args, the task and the document."""

    def __init__(self, context: str, continuation: str, doc: int | None = None) -> None:
        self.args = (context, continuation)
        self.task_name, self.doc_id = "task", doc


# Task shapes, each a list of documents, each a list of (context, continuation).
SHARED_CONTEXT = [  # ARC, HellaSwag, PIQA: one context, choices of different lengths
    [("Question: Which returns the decoded object?\nAnswer:", c)
     for c in (" loads", " dumps the object", " a string of text", " the decoder")],
    [("Question: What does the encoder raise?\nAnswer:", c)
     for c in (" TypeError", " nothing at all", " ValueError if the value is bad")],
]  # fmt: skip
SHARED_CONTINUATION = [  # WinoGrande: the option sits in the context, the rest is shared
    [(f"The decoder failed because {o}", " was not valid.") for o in ("the object", "it")],
    [(f"When {o}", " raises an error, the caller returns None.") for o in ("the parser", "json")],
]  # fmt: skip
ONE_TOKEN = [  # BoolQ: " yes" / " no" after one passage share one input
    [("Passage: the decoder returns a dict.\nQuestion: is it a dict?\nAnswer:", a)
     for a in (" yes", " no")],
]  # fmt: skip
LONG_CONTINUATION = [  # a continuation longer than its context
    [("Return", c) for c in (
        " the object decoded from the JSON document given as a string of text",
        " a string holding the JSON representation of the object",
    )],
]  # fmt: skip
SHAPES = {
    "shared context": SHARED_CONTEXT,
    "shared continuation": SHARED_CONTINUATION,
    "one-token continuations": ONE_TOKEN,
    "continuation longer than context": LONG_CONTINUATION,
}


def requests_of(docs: list[list[tuple[str, str]]]) -> list[Req]:
    return [Req(c, x, doc=d) for d, doc in enumerate(docs) for c, x in doc]


def score(
    name: str, sp_model: Path, reqs: list[Req], share: bool, batch_size: int = 2, **kw: Any
) -> tuple[list[tuple[float, bool]], ElmLM]:
    lm = ElmLM(
        backend(name, kw.pop("dtype", "float32")),
        SentencePieceTokenizer(sp_model),
        batch_size=batch_size,
        share_prefix=share,
        **kw,
    )
    assert lm.share_prefix == share
    return lm.loglikelihood(reqs, disable_tqdm=True), lm


def assert_same(got: list[tuple[float, bool]], want: list[tuple[float, bool]], tol: float) -> None:
    np.testing.assert_allclose([ll for ll, _ in got], [ll for ll, _ in want], rtol=0, atol=tol)
    assert [g for _, g in got] == [g for _, g in want]


# The trie and its mask -------------------------------------------------------------------------


def test_pack_stores_a_shared_prefix_once_and_places_branches_at_their_positions() -> None:
    row = packing.pack([(1, 5, 6, 7), (1, 5, 6, 8, 9), (1, 5, 6, 7), (1, 4)])
    assert row.tokens == [1, 5, 6, 7, 8, 9, 4]
    assert row.positions == [0, 1, 2, 3, 3, 4, 1]
    assert row.paths == {
        (1, 5, 6, 7): [0, 1, 2, 3],
        (1, 5, 6, 8, 9): [0, 1, 2, 4, 5],
        (1, 4): [0, 6],
    }
    mask = row.mask()
    for path in row.paths.values():  # each node sees exactly the nodes of its path up to itself
        for k, node in enumerate(path):
            assert set(np.flatnonzero(mask[node])) == set(path[: k + 1])


def test_batch_arrays_pad_rows_without_a_query_that_sees_nothing() -> None:
    rows = [packing.pack([(1, 2, 3), (1, 2, 4)]), packing.pack([(1, 7)])]
    tokens, positions, mask = packing.batch_arrays(rows)
    assert tokens.tolist() == [[1, 2, 3, 4], [1, 7, 0, 0]]
    assert positions.tolist() == [[0, 1, 2, 2], [0, 1, 0, 0]]
    assert mask.any(-1).all()  # padding queries see themselves: no empty softmax
    assert not mask[1, :2, 2:].any()  # no real query sees padding


# The models' packed forward --------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
def test_packed_forward_equals_each_input_scored_alone(name: str) -> None:
    rng = np.random.default_rng(0)
    prefix = tuple(rng.integers(3, 500, 9).tolist())
    inputs = [prefix + tuple(rng.integers(3, 500, n).tolist()) for n in (1, 4, 7)]
    rows = [packing.pack(inputs), packing.pack([inputs[1][:5]])]  # the second row is padded
    tokens, positions, mask = packing.batch_arrays(rows)
    model = backend(name)
    flat, targets = [], []
    for b, row in enumerate(rows):
        for path in row.paths.values():
            flat += [b * tokens.shape[1] + node for node in path]
            targets += [int(t) for t in rng.integers(0, 512, len(path))]
    picked, greedy = model.score_packed(
        tokens, positions, mask, np.asarray(flat), np.asarray(targets)
    )
    at = 0
    for row in rows:
        for inp in row.paths:
            want = model.logprob_rows(np.asarray([inp]), [len(inp)], [len(inp)])[0]
            aim = targets[at : at + len(inp)]
            np.testing.assert_allclose(
                picked[at : at + len(inp)], want[np.arange(len(inp)), aim], rtol=0, atol=1e-5
            )
            assert greedy[at : at + len(inp)].tolist() == (want.argmax(-1) == aim).tolist()
            at += len(inp)


# The adapter on every task shape ---------------------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_packed_scoring_equals_whole_requests(sp_model: Path, name: str, shape: str) -> None:
    reqs = requests_of(SHAPES[shape])
    whole, plain = score(name, sp_model, reqs, share=False)
    packed, lm = score(name, sp_model, reqs, share=True)
    assert_same(packed, whole, TOLERANCE["float32"])
    assert lm.input_tokens == plain.input_tokens  # the same inputs, counted whole
    assert lm.computed_tokens < lm.input_tokens  # each document's shared prefix once
    assert lm.padded_tokens >= lm.computed_tokens
    assert plain.computed_tokens == plain.input_tokens


@pytest.mark.parametrize("name", BACKENDS)
def test_contexts_truncated_at_the_models_length(sp_model: Path, name: str) -> None:
    long = "Serialize obj to a JSON formatted str using this conversion table and more words"
    docs = [[(long, c) for c in (" now", " with the encoder", " if it can")], *SHARED_CONTEXT[:1]]
    reqs = requests_of(docs)
    whole, _ = score(name, sp_model, reqs, share=False, max_length=16)
    packed, lm = score(name, sp_model, reqs, share=True, max_length=16)
    assert_same(packed, whole, TOLERANCE["float32"])
    # Cut from the left to 16 tokens, inputs whose continuations have the same length keep their
    # shared part (at the same positions); others start at different tokens and share nothing.
    ctx = list(range(3, 33))
    same, other = [[40, 41, 42], [50, 51, 52]], [[40, 41, 42], [50, 51, 52, 53, 54]]
    for conts, shared in ((same, 14), (other, 0)):
        lm = ElmLM(backend(name), SentencePieceTokenizer(sp_model), max_length=16)
        got = lm._loglikelihood_tokens([(None, ctx, c) for c in conts])
        assert lm.input_tokens == 32 and lm.computed_tokens == 32 - shared
        plain = ElmLM(
            backend(name), SentencePieceTokenizer(sp_model), max_length=16, share_prefix=False
        )
        assert_same(got, plain._loglikelihood_tokens([(None, ctx, c) for c in conts]), 1e-4)


@pytest.mark.parametrize("name", BACKENDS)
def test_batch_size_does_not_change_results(sp_model: Path, name: str) -> None:
    reqs = requests_of([doc for docs in SHAPES.values() for doc in docs])
    first, _ = score(name, sp_model, reqs, share=True, batch_size=1)
    for size in (2, 3, 16):
        got, lm = score(name, sp_model, reqs, share=True, batch_size=size)
        assert_same(got, first, TOLERANCE["float32"])
        docs = sum(len(d) for d in SHAPES.values())
        assert lm.forwards == -(-docs // size)  # one row per document


@pytest.mark.parametrize("name", BACKENDS)
def test_bfloat16_packed_scoring_is_within_its_bound(sp_model: Path, name: str) -> None:
    reqs = requests_of(SHARED_CONTEXT + SHARED_CONTINUATION)
    whole, _ = score(name, sp_model, reqs, share=False, dtype="bfloat16")
    packed, _ = score(name, sp_model, reqs, share=True, dtype="bfloat16")
    np.testing.assert_allclose(
        [ll for ll, _ in packed], [ll for ll, _ in whole], rtol=0, atol=TOLERANCE["bfloat16"]
    )


def test_requests_without_a_document_group_by_context(sp_model: Path) -> None:
    """Direct calls (and rolling windows) carry no document: equal contexts still share a row."""
    lm = ElmLM(backend("torch"), SentencePieceTokenizer(sp_model), batch_size=4)
    ctx = lm.tok_encode("Return the value")
    conts = [lm.tok_encode(c, add_special_tokens=False) for c in (" of it", " now", " twice")]
    got = lm._loglikelihood_tokens([(None, ctx, c) for c in conts])
    assert lm.forwards == 1 and lm.computed_tokens == len(ctx) + sum(len(c) - 1 for c in conts)
    plain = ElmLM(backend("torch"), SentencePieceTokenizer(sp_model), share_prefix=False)
    assert_same(got, plain._loglikelihood_tokens([(None, ctx, c) for c in conts]), 1e-4)


def test_a_backend_without_packed_rows_scores_whole(sp_model: Path) -> None:
    class Whole(type(backend("torch"))):  # type: ignore[misc]
        packs_rows = False

    plain = backend("torch")
    whole = Whole.__new__(Whole)
    whole.__dict__.update(plain.__dict__)
    lm = ElmLM(whole, SentencePieceTokenizer(sp_model), batch_size=2)
    assert not lm.share_prefix
    lm.loglikelihood(requests_of(SHARED_CONTEXT), disable_tqdm=True)
    assert lm.computed_tokens == lm.input_tokens


# --batch-size auto -----------------------------------------------------------------------------


def test_rows_that_fit_extrapolates_the_two_probes() -> None:
    # 1 row: 100 + 10; 2 rows: 100 + 20 -> under 0.9 x 300 = 270 bytes fit 17 rows.
    assert rows_that_fit(110, 120, 300) == 17
    assert rows_that_fit(500, 600, 300) == 1  # not even one row fits: one at a time


@pytest.mark.parametrize("share", [True, False], ids=["packed", "whole"])
def test_auto_batches_on_a_cpu_hold_the_token_budget(
    sp_model: Path, share: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter, "CPU_BATCH_TOKENS", 100)
    reqs = requests_of([doc for docs in SHAPES.values() for doc in docs])
    want, _ = score("torch", sp_model, reqs, share=share, batch_size=1)
    lm = ElmLM(backend("torch"), SentencePieceTokenizer(sp_model), "auto", share_prefix=share)
    spans: list[tuple[int, int, int]] = []  # rows, widest row, rows left after the batch
    real = lm._batches

    def spy(sizes: list[int], probe: Any) -> list[tuple[int, int]]:
        got = real(sizes, probe)
        spans.extend((b - a, sizes[a], len(sizes) - b) for a, b in got)
        return got

    monkeypatch.setattr(lm, "_batches", spy)
    assert_same(lm.loglikelihood(reqs, disable_tqdm=True), want, TOLERANCE["float32"])
    for rows, widest, left in spans:  # as many rows as the budget holds; a wider row alone
        assert rows * widest <= 100 or rows == 1
        assert left == 0 or (rows + 1) * widest > 100
    assert any(rows > 1 for rows, _, _ in spans) and lm.forwards == len(spans)


def test_auto_batches_on_a_gpu_fill_its_memory(sp_model: Path) -> None:
    """No GPU here: a backend whose memory is a fake that grows by 1,000 bytes a row."""
    plain = backend("torch")
    probed: list[int] = []

    class FakeGpu(type(plain)):  # type: ignore[misc]
        def memory_limit_bytes(self) -> int:
            return 10_000

        def reset_peak_memory(self) -> None:
            pass

        def peak_memory_bytes(self) -> tuple[int, str]:
            return 1_000 + 1_000 * probed[-1], "fake"

        def score_packed(self, tokens: np.ndarray, *args: Any) -> Any:
            probed.append(tokens.shape[0])
            return super().score_packed(tokens, *args)

    gpu = FakeGpu.__new__(FakeGpu)
    gpu.__dict__.update(plain.__dict__)
    lm = ElmLM(gpu, SentencePieceTokenizer(sp_model), "auto")
    reqs = requests_of([doc for docs in SHAPES.values() for doc in docs])
    want, _ = score("torch", sp_model, reqs, share=True, batch_size=1)
    assert_same(lm.loglikelihood(reqs, disable_tqdm=True), want, TOLERANCE["float32"])
    # Probes of 1 and 2 rows, then (0.9 x 10,000 - 0) / 1,000 = 9 rows at the widest row's
    # width: the 6 documents (narrower rows) in one forward.
    assert probed[:2] == [1, 2] and probed[2:] == [6] and lm.forwards == 1
