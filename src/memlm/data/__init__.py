"""Packaged public-domain text used by the evaluations (no dataset hub is needed)."""

from memlm.data.corpora import available_corpora, load_corpus

__all__ = ["available_corpora", "load_corpus"]
