"""Typed errors. Every failure memlm reports on purpose is a `MemlmError`, so callers can catch one
base class; each subclass also inherits the closest builtin so generic handlers keep working."""

from __future__ import annotations


class MemlmError(Exception):
    """Base class of every error memlm raises on purpose."""


class ConfigError(MemlmError, ValueError):
    """A memory config holds a value outside its allowed range (e.g. `decay` not in (0, 1])."""


class UnknownMechanismError(MemlmError, KeyError):
    """A mechanism name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class IncompatibleMemoryError(MemlmError, ValueError):
    """Saved memory weights or state were made for another backbone or another memory layout."""


class CorruptedFileError(MemlmError, OSError):
    """A file memlm wrote earlier is truncated, altered or unreadable."""


class BackboneNotFoundError(MemlmError, OSError):
    """The requested backbone cannot be found locally and cannot be downloaded from here."""


class MemoryStateError(MemlmError, RuntimeError):
    """A memory's state does not fit the current call (e.g. batch size mismatch)."""


class TrainingDivergedError(MemlmError, RuntimeError):
    """Training produced non-finite gradients step after step (see `memlm.train.Trainer`)."""
