"""The lm-eval adapter against direct computation with the model, on a tiny random model and a
SentencePiece tokenizer trained here."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from elmbench.accuracy.adapter import ElmLM
from elmbench.accuracy.tokenizer import SentencePieceTokenizer, load_tokenizer
from elmbench.backends import Backend, ModelSpec, create_backend
from elmbench.errors import ElmbenchError


@pytest.fixture(scope="module")
def backend() -> Backend:
    return create_backend("torch", ModelSpec(model="tiny", seed=5))


class Req:
    """The part of lm-eval's Instance the adapter reads."""

    def __init__(self, *args: Any) -> None:
        self.args = args


def _direct(backend: Backend, ids: list[int], n_cont: int) -> tuple[float, bool]:
    tokens = np.asarray([ids[:-1]])
    picked, greedy = backend.score(tokens, np.asarray([ids[1:]]))
    return float(picked[0, -n_cont:].sum()), bool(greedy[0, -n_cont:].all())


def test_loglikelihood_equals_direct_computation(sp_model: Path, backend: Backend) -> None:
    lm = ElmLM(backend, SentencePieceTokenizer(sp_model), batch_size=3)
    pairs = [
        ("The object is", " a dictionary"),
        ("Return the", " value"),
        ("def", " decode(self, s)"),
        ("", "json module"),
        ("Raise an error ", "if"),
    ]
    results = lm.loglikelihood([Req(c, x) for c, x in pairs], disable_tqdm=True)
    for (context, continuation), (ll, greedy) in zip(pairs, results, strict=True):
        if context:
            ctx, cont = lm._encode_pair(context, continuation)
        else:  # empty context: BOS is the context
            ctx, cont = [1], lm.tok_encode(continuation, add_special_tokens=False)
        assert ctx[0] == 1  # BOS added, as in the paper
        want_ll, want_greedy = _direct(backend, ctx + cont, len(cont))
        assert ll == pytest.approx(want_ll, abs=1e-4) and greedy == want_greedy


def test_batched_equals_one_at_a_time_and_shares_inputs(sp_model: Path, backend: Backend) -> None:
    """The plain path (each input whole); packed rows are tested in test_accuracy_packing."""
    tok = SentencePieceTokenizer(sp_model)
    context = "Deserialize a JSON document to a Python object. Answer:"
    choices = [" A", " B", " C", " D", " object", " string of text"]
    reqs = [Req(context, c) for c in choices] + [Req("Serialize", " obj")]
    one = ElmLM(backend, tok, batch_size=1, share_prefix=False)
    many = ElmLM(backend, tok, batch_size=4, share_prefix=False)
    a = one.loglikelihood(reqs, disable_tqdm=True)
    b = many.loglikelihood(reqs, disable_tqdm=True)
    for (la, ga), (lb, gb) in zip(a, b, strict=True):
        assert la == pytest.approx(lb, abs=1e-4) and ga == gb
    # Answers whose scored input (context + all but the last answer token) is the same share
    # one forward, as lm-eval's logits cache does for multiple-choice questions.
    encoded = [one._encode_pair(r.args[0], r.args[1]) for r in reqs]
    distinct = {tuple((c + x)[:-1]) for c, x in encoded}
    assert len(distinct) < len(reqs)
    assert one.forwards == len(distinct)
    assert many.forwards == -(-len(distinct) // 4)
    # Both count each distinct input's tokens once; padding is counted apart, per batch.
    assert one.input_tokens == many.input_tokens == sum(len(d) for d in distinct)
    assert one.padded_tokens == one.input_tokens < many.padded_tokens


def test_greedy_flag_is_true_for_the_models_own_choice(sp_model: Path, backend: Backend) -> None:
    lm = ElmLM(backend, SentencePieceTokenizer(sp_model))
    ctx = lm.tok_encode("Return the value")
    best = int(backend.logprob_rows(np.asarray([ctx]), [len(ctx)], [1])[0][0].argmax())
    other = (best + 1) % 400
    (_, g1), (_, g2) = lm._loglikelihood_tokens([(None, ctx, [best]), (None, ctx, [other])])
    assert g1 and not g2


def test_rolling_windows_cover_every_token_once(sp_model: Path, backend: Backend) -> None:
    lm = ElmLM(backend, SentencePieceTokenizer(sp_model), max_length=16)
    text = "Serialize obj to a JSON formatted str using this conversion table and more words"
    ids = lm.tok_encode(text)
    assert len(ids) > 16  # forces several windows
    (total,) = lm.loglikelihood_rolling([Req(text)])
    # Direct: windows of 16 predicted tokens; the first is conditioned on BOS, each later one on
    # the tokens just before it, so every window's input is at most 16 tokens.
    seq = [1, *ids]  # the prefix token, then the (BOS-led) encoding
    want = 0.0
    for start in range(0, len(ids), 16):
        end = min(start + 16, len(ids))
        window = seq[max(0, end - 16) : end + 1]
        want += _direct(backend, window, end - start)[0]
    assert total == pytest.approx(want, abs=1e-3)


class WrapTokenizer(SentencePieceTokenizer):
    """The test tokenizer for generation: the tiny model has 512 ids, the tokenizer 400 pieces,
    so an id past them decodes as id - 400 (the model may well generate one)."""

    def decode(self, ids: list[int]) -> str:
        """Text of ids, any id wrapped into the tokenizer's range."""
        return super().decode([i % 400 for i in ids])


def _greedy_text(backend: Backend, tok: WrapTokenizer, ids: list[int], n: int) -> str:
    """Decode of the model's own greedy continuation of `ids`, `n` tokens, cut at EOS."""
    want = backend.generate(np.asarray([ids]), n)[0].tolist()
    return tok.decode(want[: want.index(tok.eos_id)] if tok.eos_id in want else want)


def _spy_setup(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the sequence length each generation allocates its KV cache for."""
    lengths: list[int] = []
    real = backend.setup

    def setup(batch_size: int, max_seq_len: int) -> None:
        lengths.append(max_seq_len)
        real(batch_size, max_seq_len)

    monkeypatch.setattr(backend, "setup", setup)
    return lengths


def test_generate_until_is_greedy_and_stops(sp_model: Path, backend: Backend) -> None:
    tok = WrapTokenizer(sp_model)
    lm = ElmLM(backend, tok)
    context = "The decoder returns"
    (text,) = lm.generate_until([Req(context, {"until": ["\u2603"], "max_gen_toks": 6})])
    assert text == _greedy_text(backend, tok, lm.tok_encode(context), 6)
    assert len(text) >= 4, text  # the seeded model says enough to cut inside it
    # A stop taken from the second half of the text: generation must hit it and cut before it.
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    (cut,) = lm.generate_until([Req(context, {"until": ["\u2603", stop], "max_gen_toks": 6})])
    assert cut == text[: text.find(stop)] and len(cut) < len(text)


def test_generate_until_stops_at_the_token_limit(
    sp_model: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = WrapTokenizer(sp_model)
    lm = ElmLM(backend, tok)
    context = "The decoder returns"
    ids = lm.tok_encode(context)
    want = _greedy_text(backend, tok, ids, 2)
    lengths = _spy_setup(backend, monkeypatch)
    (short,) = lm.generate_until([Req(context, {"until": ["\u2603"], "max_gen_toks": 2})])
    (longer,) = lm.generate_until([Req(context, {"until": ["\u2603"], "max_gen_toks": 6})])
    assert short == want
    assert longer.startswith(short) and len(longer) > len(short)
    assert lengths == [len(ids) + 2, len(ids) + 6]  # room for exactly the limit


def test_generation_keeps_the_last_context_tokens_that_fit(
    sp_model: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = WrapTokenizer(sp_model)
    lm = ElmLM(backend, tok, max_length=16)
    context = "Serialize obj to a JSON formatted str using this conversion table and more words"
    ids = lm.tok_encode(context)
    assert len(ids) > 16  # over the context length
    want = _greedy_text(backend, tok, ids[-11:], 5)
    lengths = _spy_setup(backend, monkeypatch)
    (text,) = lm.generate_until([Req(context, {"until": ["\u2603"], "max_gen_toks": 5})])
    assert lengths == [16]  # the last 11 context tokens and 5 to generate: the model's length
    assert text == want
    # A context of exactly the model's length (BOS and 15 pieces) is cut the same way.
    exact = tok.decode(ids[1:16])
    assert len(lm.tok_encode(exact)) == 16
    lm.generate_until([Req(exact, {"until": ["\u2603"], "max_gen_toks": 5})])
    assert lengths[-1] == 16


def test_generation_limit_that_leaves_no_context_is_an_error(
    sp_model: Path, backend: Backend
) -> None:
    lm = ElmLM(backend, WrapTokenizer(sp_model), max_length=16)
    with pytest.raises(ElmbenchError, match="max_gen_toks 16 leaves no room for a context"):
        lm.generate_until([Req("The decoder", {"until": ["x"], "max_gen_toks": 16})])


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(ElmbenchError, match="no tokenizer given"):
        load_tokenizer(None)
    with pytest.raises(ElmbenchError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing" / "tokenizer.model"))
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ElmbenchError, match="not a SentencePiece model"):
        load_tokenizer(str(bad))


def test_tokenizer_from_a_folder_holding_tokenizer_model(sp_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "llama2"
    folder.mkdir()
    shutil.copy(sp_model, folder / "tokenizer.model")
    tok = load_tokenizer(str(folder))
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.identity == f"sentencepiece:{folder / 'tokenizer.model'}"
    assert tok.encode("Return the value") == SentencePieceTokenizer(sp_model).encode(
        "Return the value"
    )


@pytest.mark.parametrize("share", [True, False], ids=["packed", "whole"])
def test_each_scored_batch_is_cached_before_the_next_runs(
    sp_model: Path,
    backend: Backend,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    share: bool,
) -> None:
    """An interrupted run keeps what it scored: lm-eval's request cache gets every batch at once."""
    lm = ElmLM(backend, SentencePieceTokenizer(sp_model), batch_size=2, share_prefix=share)
    cached: list[tuple[Any, Any]] = []

    class Hook:
        def add_partial(self, attr: str, req: Any, res: Any) -> None:
            cached.append((req, res))

    lm.set_cache_hook(Hook())
    calls: list[int] = []

    def fail_on_second(real: Any) -> Any:
        def call(*args: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*args)

        return call

    if share:
        monkeypatch.setattr(backend, "score_packed", fail_on_second(backend.score_packed))
    else:
        monkeypatch.setattr(lm, "_logprob_rows", fail_on_second(lm._logprob_rows))
    pairs = [("Return the", " value"), ("The object", " is"), ("def", " f"), ("Raise", " it")]
    with pytest.raises(KeyboardInterrupt):
        lm.loglikelihood([Req(c, x) for c, x in pairs])
    assert len(cached) == 2  # the first batch's two answers, before the interruption
    assert {req for req, _ in cached} <= set(pairs)
    assert "Scoring loglikelihood requests" in capsys.readouterr().err  # progress on stderr
