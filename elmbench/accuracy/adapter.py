"""One lm-eval model class over the backend seam, for torch and MLX alike.

Scoring is batched (length-sorted, right-padded, one forward per batch). By default the requests
of one document (the choices of a multiple-choice question) go into one packed row that computes
their shared token prefix once (`elmbench.accuracy.packing`); the plain path scores each distinct
input whole, sharing a forward only between identical inputs as lm-eval's HF model does. Both
equal scoring one request at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM

from elmbench.accuracy import packing
from elmbench.accuracy.tokenizer import Tokenizer
from elmbench.backends import Backend, decode_steps
from elmbench.errors import ElmbenchError, NonFiniteError

Request = tuple[Any, list[int], list[int]]
AUTO = "auto"  # --batch-size auto: see ElmLM._batches
# Padded tokens per forward under --batch-size auto on a CPU: beyond a few thousand tokens a
# forward is no faster per token and only holds more memory (docs/accuracy-speed.md).
CPU_BATCH_TOKENS = 2048
MEMORY_HEADROOM = 0.9  # share of the device memory limit that auto batches may fill


def rows_that_fit(peak_one: int, peak_two: int, limit: int) -> int:
    """Rows of a probed width that fit under `limit` bytes, from the peaks at 1 and 2 rows.

    Peak memory grows linearly in rows (activations, attention scores): base + rows x per_row.
    """
    per_row = max(1, peak_two - peak_one)
    base = peak_one - per_row
    return max(1, int((MEMORY_HEADROOM * limit - base) // per_row))


class ElmLM(TemplateLM):
    """OpenELM (any backend) as an lm-eval language model; BOS added as in the paper."""

    def __init__(
        self,
        model: Backend,
        tokenizer: Tokenizer,
        batch_size: int | str = 1,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        add_bos_token: bool = True,
        share_prefix: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer_impl = tokenizer
        if batch_size != AUTO and int(batch_size) < 1:
            raise ElmbenchError(f"batch size {batch_size}: give a positive number or 'auto'")
        self.batch_size: int | str = AUTO if batch_size == AUTO else int(batch_size)
        self._max_length = max_length or int(model.config.max_context_length)
        self.max_gen_toks = max_gen_toks
        self.add_bos_token = add_bos_token
        # Packed rows where the backend scores them (OpenELM; not transformers' comparison models).
        self.share_prefix = share_prefix and model.packs_rows
        self.forwards = 0  # forward passes run, for the batching benchmark
        self.input_tokens = 0  # tokens of the distinct inputs scored, each counted whole
        self.computed_tokens = 0  # tokens run through the model: shared prefixes once, no padding
        self.padded_tokens = 0  # rows x longest row, padding included
        self._groups: list[Any] | None = None  # the document of each request, while it is scored
        # Data parallel under `accelerate launch`: lm-eval shards requests by rank and gathers
        # metrics through the methods below; rank 0 alone gets the results.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
        self._device = "cpu"  # where the small tensors of gathers live (gloo)

    @property
    def eot_token_id(self) -> int:
        """End of text: the tokenizer's EOS."""
        return self.tokenizer_impl.eos_id

    @property
    def prefix_token_id(self) -> int:
        """Context for an empty context: BOS (as lm-eval's HF model with add_bos_token)."""
        return self.tokenizer_impl.bos_id if self.add_bos_token else self.eot_token_id

    @property
    def max_length(self) -> int:
        """The model's context length."""
        return self._max_length

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        """Ids of `string`, with BOS first unless special tokens are turned off."""
        ids = self.tokenizer_impl.encode(string)
        bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return [self.tokenizer_impl.bos_id, *ids] if bos else ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        """Text of ids."""
        return self.tokenizer_impl.decode(list(ids))

    def all_gather(self, tensor: Any) -> Any:
        """Concatenate a tensor from every rank."""
        import torch
        import torch.distributed as dist

        parts = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's object on `dst` (None elsewhere)."""
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        import torch.distributed as dist

        dist.barrier()

    # Scoring -------------------------------------------------------------------------------------

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> Any:
        """lm-eval's tokenization, then scoring with each request's document as its group."""
        self._groups = [
            (getattr(r, "task_name", None), getattr(r, "doc_id", None)) for r in requests
        ]
        try:
            return super().loglikelihood(requests, disable_tqdm)
        finally:
            self._groups = None

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, whether every continuation token is the argmax).

        Each batch's answers go to lm-eval's request cache as soon as the batch is scored, so an
        interrupted run resumes from the last finished batch.
        """
        plans = []
        for _, context, continuation in requests:
            if not continuation:
                raise ValueError("lm-eval gave an empty continuation")
            whole = (context + continuation)[-(self.max_length + 1) :]
            plans.append((tuple(whole[:-1]), list(continuation)))
        if self.share_prefix:
            groups = self._groups if self._groups is not None else [None] * len(requests)
            # Without a document (rolling windows, direct calls) requests group by context.
            keys = [
                ("doc", g) if g is not None and g[1] is not None else ("context", tuple(r[1]))
                for g, r in zip(groups, requests, strict=True)
            ]
            return self._score_packed(requests, plans, keys, disable_tqdm)
        return self._score_whole(requests, plans, disable_tqdm)

    def _answered(self, requests: list[Request], i: int, answer: tuple[float, bool]) -> None:
        key = requests[i][0]
        if key is not None:  # rolling windows carry no request key
            self.cache_hook.add_partial("loglikelihood", key, answer)

    def _score_packed(
        self,
        requests: list[Request],
        plans: list[tuple[tuple[int, ...], list[int]]],
        keys: list[Any],
        disable_tqdm: bool,
    ) -> list[tuple[float, bool]]:
        """One packed row per group, rows sorted longest first and batched (`_batches`)."""
        members: dict[Any, list[int]] = {}
        for i, key in enumerate(keys):
            members.setdefault(key, []).append(i)
        rows = [(packing.pack([plans[i][0] for i in group]), group) for group in members.values()]
        rows.sort(key=lambda rg: (-len(rg[0]), rg[0].tokens))
        answers: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        with self._progress(len(requests), "loglikelihood requests", disable_tqdm) as bar:

            def probe(n: int) -> object:  # n copies of the widest row, for --batch-size auto
                return self._run_packed([rows[0]] * n, plans, count=False)

            for start, end in self._batches([len(row) for row, _ in rows], probe):
                for i, answer in self._run_packed(rows[start:end], plans):
                    answers[i] = answer
                    self._answered(requests, i, answer)
                bar.update(sum(len(group) for _, group in rows[start:end]))
        return answers

    def _run_packed(
        self,
        batch: list[tuple[packing.PackedRow, list[int]]],
        plans: list[tuple[tuple[int, ...], list[int]]],
        count: bool = True,
    ) -> list[tuple[int, tuple[float, bool]]]:
        """One forward over packed rows; (request index, answer) for each of their requests."""
        tokens, positions, mask = packing.batch_arrays([row for row, _ in batch])
        width = tokens.shape[1]
        flat: list[int] = []  # flat (B * T) index of each scored token
        targets: list[int] = []
        spans: list[tuple[int, int, int]] = []  # request, first scored token, count
        for b, (row, group) in enumerate(batch):
            for i in group:
                inp, continuation = plans[i]
                path = row.paths[inp][-len(continuation) :]
                spans.append((i, len(flat), len(path)))
                flat.extend(b * width + node for node in path)
                targets.extend(continuation[-len(path) :])
        picked, greedy = self.model.score_packed(
            tokens, positions, mask, np.asarray(flat), np.asarray(targets)
        )
        _check_finite(picked[:, None], width)
        if count:
            self.forwards += 1
            self.input_tokens += sum(len(inp) for row, _ in batch for inp in row.paths)
            self.computed_tokens += sum(len(row) for row, _ in batch)
            self.padded_tokens += tokens.size
        return [
            (i, (float(picked[at : at + n].sum()), bool(greedy[at : at + n].all())))
            for i, at, n in spans
        ]

    def _score_whole(
        self,
        requests: list[Request],
        plans: list[tuple[tuple[int, ...], list[int]]],
        disable_tqdm: bool,
    ) -> list[tuple[float, bool]]:
        """Each distinct input whole (identical inputs share it), sorted longest first."""
        inputs: dict[tuple[int, ...], list[int]] = {}  # shared input -> request indices
        for i, (inp, _) in enumerate(plans):
            inputs.setdefault(inp, []).append(i)
        # Longest first, so a batch that does not fit fails at once; rows of a batch are padded.
        unique = sorted(inputs, key=lambda t: (-len(t), t))
        need = {inp: max(len(plans[i][1]) for i in inputs[inp]) for inp in unique}
        answers: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        with self._progress(len(requests), "loglikelihood requests", disable_tqdm) as bar:

            def probe(n: int) -> object:  # n copies of the widest input, for --batch-size auto
                return self._logprob_rows([unique[0]] * n, [need[unique[0]]] * n, count=False)

            for start, end in self._batches([len(inp) for inp in unique], probe):
                batch = unique[start:end]
                for inp, rows in zip(
                    batch, self._logprob_rows(batch, [need[x] for x in batch]), strict=True
                ):
                    _check_finite(rows, len(inp))
                    for i in inputs[inp]:
                        answers[i] = _answer(rows, plans[i][1])
                        self._answered(requests, i, answers[i])
                    bar.update(len(inputs[inp]))
        return answers

    def _batches(self, widths: list[int], probe: Callable[[int], object]) -> list[tuple[int, int]]:
        """(start, end) of each batch over rows sorted longest first.

        A number gives that many rows a batch. "auto" gives each batch as many rows as a token
        budget allows (rows x the batch's widest row): on a CPU the measured `CPU_BATCH_TOKENS`,
        elsewhere the largest that fits in the device's memory, from two probe forwards of the
        widest rows (`rows_that_fit`).
        """
        if not widths:
            return []
        if self.batch_size != AUTO:
            size = int(self.batch_size)
            return [(s, min(s + size, len(widths))) for s in range(0, len(widths), size)]
        budget = self._token_budget(widths[0], probe)
        spans, start = [], 0
        while start < len(widths):
            end = min(len(widths), start + max(1, budget // widths[start]))
            spans.append((start, end))
            start = end
        return spans

    def _token_budget(self, width: int, probe: Callable[[int], object]) -> int:
        """Padded tokens a forward may hold (see `_batches`)."""
        limit = self.model.memory_limit_bytes()
        if limit is None:
            return CPU_BATCH_TOKENS
        peaks = []
        for rows in (1, 2):
            self.model.reset_peak_memory()
            probe(rows)
            peaks.append(self.model.peak_memory_bytes()[0])
        return width * rows_that_fit(peaks[0], peaks[1], limit)

    def _progress(self, total: int, what: str, disable: bool) -> Any:
        """A progress bar on stderr (rank 0 only), as lm-eval's own models show."""
        from tqdm import tqdm

        return tqdm(total=total, desc=f"Scoring {what}", disable=disable or self.rank != 0)

    def _logprob_rows(
        self, batch: list[tuple[int, ...]], last: list[int], count: bool = True
    ) -> list[np.ndarray]:
        lengths = [len(inp) for inp in batch]
        tokens = np.zeros((len(batch), max(lengths)), dtype=np.int64)  # right padding
        for r, inp in enumerate(batch):
            tokens[r, : len(inp)] = inp
        if count:
            self.forwards += 1
            self.input_tokens += sum(lengths)
            self.computed_tokens += sum(lengths)
            self.padded_tokens += tokens.size
        return self.model.logprob_rows(tokens, lengths, last)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole strings over disjoint windows of the context length."""
        out = []
        with self._progress(len(requests), "rolling log-likelihoods", disable_tqdm) as bar:
            for request in requests:
                out.append(self._rolling(request.args[0]))
                bar.update(1)
        return out

    def _rolling(self, string: str) -> float:
        """One string's log-likelihood over its windows; cached in lm-eval's request cache."""
        windows = [
            (None, *lm_utils.make_disjoint_window(w))
            for w in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
        ]
        total = sum(ll for ll, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))
        self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return total

    # Generation ----------------------------------------------------------------------------------

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy generation with the KV cache until a stop sequence, EOS or the token limit."""
        out = []
        with self._progress(len(requests), "generations", disable_tqdm) as bar:
            for request in requests:
                context, gen_kwargs = request.args
                kwargs = dict(gen_kwargs or {})
                until = kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
                until = [until] if isinstance(until, str) else list(until)
                limit = int(kwargs.get("max_gen_toks", self.max_gen_toks))
                text = self.generate_greedy(context, until, limit)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                out.append(text)
                bar.update(1)
        return out

    def generate_greedy(self, context: str, until: list[str], limit: int) -> str:
        """Greedy continuation of `context`, cut before the first stop sequence.

        As lm-eval's HF model: the context keeps its last `max_length - limit` tokens, so that
        context and generation fit the model's length; a limit that leaves no room is an error.
        """
        if limit >= self.max_length:
            raise ElmbenchError(
                f"max_gen_toks {limit} leaves no room for a context: it must be less than the "
                f"model's context length ({self.max_length})"
            )
        ids = self.tok_encode(context)[-(self.max_length - limit) :]
        prompt = np.asarray([ids], dtype=np.int64)
        self.model.setup(1, len(ids) + limit)
        generated: list[int] = []

        def stop(tok: Any) -> bool:
            """Keep the token unless it is EOS; stop at EOS or once a stop sequence appears."""
            token = int(self.model.to_numpy(tok)[0, 0])
            if token == self.eot_token_id:
                return True
            generated.append(token)
            text = self.tok_decode(generated)
            return any(s and s in text for s in until)

        first = self.model.prefill(prompt)
        if not stop(first):
            decode_steps(self.model.decode, first, len(ids), limit - 1, stop)
        text = self.tok_decode(generated)
        cut = min((text.find(s) for s in until if s and s in text), default=-1)
        return text[:cut] if cut >= 0 else text


def _answer(rows: np.ndarray, continuation: Sequence[int]) -> tuple[float, bool]:
    """Sum of the continuation's log-probs, and whether each of its tokens is the argmax."""
    logp = rows[-len(continuation) :]  # (len(cont), V)
    targets = np.asarray(continuation)
    picked = logp[np.arange(len(targets)), targets]
    return float(picked.sum()), bool((logp.argmax(-1) == targets).all())


def _check_finite(rows: np.ndarray, length: int) -> None:
    """Refuse log-probs that are NaN or infinite: an accuracy over them would be meaningless."""
    bad = ~np.isfinite(rows).all(axis=-1)  # (positions,)
    if bad.any():
        raise NonFiniteError(
            f"non-finite log-likelihoods (NaN or infinity) at {int(bad.sum())} of {len(rows)} "
            f"scored positions of a {length}-token input: the model computes no numbers here "
            "(weights with NaN, or a dtype overflowing)"
        )
