"""Train the stand-in tokenizer these speed runs use: LLaMA-2's is not available offline here.

A 32,000-piece BPE SentencePiece model over every string in the evaluation data, with ids
0-2 = unk/BOS/EOS like LLaMA's. Usage:

    python scripts/make_tokenizer.py path/to/evaldata /tmp/bench/bpe32k
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def strings(value: object) -> Iterator[str]:
    """Every non-empty string inside a JSON value, depth first."""
    if isinstance(value, str):
        if value.strip():
            yield " ".join(value.split())
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def main(data_dir: Path, prefix: Path) -> None:
    import sentencepiece as spm

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as corpus:
        for path in sorted(data_dir.rglob("*.jsonl")):
            for line in path.read_text().split("\n"):
                if not line.strip():
                    continue
                for text in strings(json.loads(line)):
                    corpus.write(text + "\n")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=corpus.name,
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=32000,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=False,
        num_threads=2,
        minloglevel=2,
    )
    model = prefix.with_suffix(".model")
    print(model, hashlib.sha256(model.read_bytes()).hexdigest())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
