"""The tokenizer the paper used (LLaMA-2 SentencePiece, BOS added), from a file, folder or HF id."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from elmbench.errors import ElmbenchError

HINT = (
    "Give --tokenizer PATH: a SentencePiece tokenizer.model (LLaMA-2's, as in the paper), a folder "
    "holding one or an HF tokenizer, or an HF id such as meta-llama/Llama-2-7b-hf with network "
    "access"
)


class Tokenizer(Protocol):
    """What the adapter needs from a tokenizer."""

    bos_id: int
    eos_id: int
    identity: str
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of token ids."""
        ...


@dataclass
class SentencePieceTokenizer:
    """A SentencePiece model file (LLaMA's `tokenizer.model`)."""

    path: Path

    def __post_init__(self) -> None:
        import sentencepiece as spm

        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise ElmbenchError(f"{self.path}: not a SentencePiece model ({exc})") from None
        self.bos_id = int(self.sp.bos_id())
        self.eos_id = int(self.sp.eos_id())
        self.vocab_size = int(self.sp.get_piece_size())
        self.identity = f"sentencepiece:{self.path}"

    def encode(self, text: str) -> list[int]:
        """Pieces of `text`, as LLaMA's slow tokenizer encodes it (without BOS)."""
        return list(self.sp.encode(text))

    def decode(self, ids: list[int]) -> str:
        """Text of ids."""
        return str(self.sp.decode(ids))


@dataclass
class HFTokenizer:
    """A `transformers` tokenizer from a local folder or (with network access) a Hub id."""

    name: str

    def __post_init__(self) -> None:
        from transformers import AutoTokenizer

        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or Path(self.name).exists()
        try:
            self.tok: Any = AutoTokenizer.from_pretrained(self.name, local_files_only=offline)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "gated" in str(exc).lower() or "401" in first or "403" in first:
                raise ElmbenchError(
                    f"tokenizer '{self.name}' is gated on the Hugging Face Hub: accept its "
                    "license on its page and log in (`hf auth login`), or give --tokenizer PATH "
                    "to a local tokenizer.model"
                ) from None
            raise ElmbenchError(
                f"tokenizer '{self.name}' cannot be loaded ({first}). {HINT}"
            ) from None
        self.bos_id = int(self.tok.bos_token_id)
        self.eos_id = int(self.tok.eos_token_id)
        self.vocab_size = len(self.tok)
        self.identity = f"hf:{self.name}"

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without special tokens."""
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        """Text of ids."""
        return str(self.tok.decode(ids))


def check_vocabulary(tokenizer: Tokenizer, model: str, model_vocab: int) -> None:
    """A tokenizer whose ids the model's embedding can look up (every id below its vocabulary)."""
    if tokenizer.vocab_size > model_vocab:
        raise ElmbenchError(
            f"tokenizer {tokenizer.identity} has {tokenizer.vocab_size:,} pieces but {model}'s "
            f"vocabulary has {model_vocab:,}: give the tokenizer the model was trained with "
            "(LLaMA-2's for OpenELM)"
        )


def load_tokenizer(spec: str | None) -> Tokenizer:
    """A tokenizer from a `.model` file, a folder (SentencePiece or HF files) or an HF id."""
    if not spec:
        raise ElmbenchError(f"no tokenizer given. {HINT}")
    path = Path(spec)
    if path.is_file():
        return SentencePieceTokenizer(path)
    if path.is_dir():
        if (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file():
            return SentencePieceTokenizer(path / "tokenizer.model")
        return HFTokenizer(str(path))
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a path, not an HF id
        raise ElmbenchError(f"tokenizer path '{spec}' does not exist. {HINT}")
    return HFTokenizer(spec)
