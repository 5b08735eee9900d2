"""Accuracy through lm-evaluation-harness: the adapter, tokenizers, suites and offline task data."""
