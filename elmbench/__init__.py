"""elmbench: benchmarking and profiling for Apple's OpenELM language models."""

__version__ = "0.1.0"
