"""Datasets: the Shakespeare character corpus and helpers for user text files."""

from rnnkit.datasets.shakespeare import (
    CharVocab,
    char_lm_split,
    default_cache_dir,
    load_shakespeare,
    load_text_file,
    read_shakespeare_tarball,
    strip_gutenberg,
)

__all__ = [
    "CharVocab",
    "char_lm_split",
    "default_cache_dir",
    "load_shakespeare",
    "load_text_file",
    "read_shakespeare_tarball",
    "strip_gutenberg",
]
