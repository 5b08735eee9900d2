"""Packed rows: inputs that share a token prefix scored in one row, the prefix computed once.

The inputs of one group (the choices of one multiple-choice question) go into a token trie; the
row holds every trie node once, in insertion order (the shared prefix, then each input's own
tokens), each at the position it has in its input, and a tree mask lets a token see exactly the
tokens of its own input up to itself. Its logits then equal those of the input scored alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PackedRow:
    """One row: trie nodes in insertion order, and each input's path through them."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # index of the node before; -1 at the root
    positions: list[int] = field(default_factory=list)  # the node's position in its inputs
    paths: dict[tuple[int, ...], list[int]] = field(default_factory=dict)  # input -> node indices
    _children: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)

    def add(self, inp: tuple[int, ...]) -> list[int]:
        """Insert an input (reusing the nodes of the prefix it shares); its node indices."""
        if inp in self.paths:
            return self.paths[inp]
        path: list[int] = []
        node = -1
        for token in inp:
            child = self._children.get((node, token))
            if child is None:
                child = len(self.tokens)
                self._children[(node, token)] = child
                self.tokens.append(token)
                self.parents.append(node)
                self.positions.append(len(path))
            path.append(child)
            node = child
        self.paths[inp] = path
        return path

    def __len__(self) -> int:
        return len(self.tokens)

    def mask(self) -> np.ndarray:
        """(T, T) bool: node i sees node j iff j is on i's path (an ancestor of i, or i)."""
        n = len(self.tokens)
        out = np.zeros((n, n), dtype=bool)
        for i, parent in enumerate(self.parents):  # parents come before their children
            if parent >= 0:
                out[i] = out[parent]
            out[i, i] = True
        return out


def pack(inputs: Sequence[tuple[int, ...]]) -> PackedRow:
    """One row holding every input, each shared prefix once."""
    row = PackedRow()
    for inp in inputs:
        row.add(inp)
    return row


def batch_arrays(rows: Sequence[PackedRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded tokens (B, T), positions (B, T) and tree masks (B, T, T) of rows.

    A padding query sees only itself (a row of the mask with no key would make softmax NaN),
    and no real query sees a padding key, so padding changes no real token's output.
    """
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width, width), dtype=bool)
    mask[:, np.arange(width), np.arange(width)] = True
    for b, row in enumerate(rows):
        n = len(row)
        tokens[b, :n] = row.tokens
        positions[b, :n] = row.positions
        mask[b, :n, :n] = row.mask()
    return tokens, positions, mask
