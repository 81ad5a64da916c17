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


class StorageError(MemlmError, OSError):
    """The file system refused a read or write: disk full, file too large, read-only or missing
    permissions, or another process holding the lock. The message says what to do; the last
    committed state is left as it was."""


_ERRNO_HINTS = {
    "ENOSPC": "the disk is full: free some space and retry",
    "EDQUOT": "the disk quota is exhausted: free some space and retry",
    "EFBIG": "the file size limit was reached (ulimit -f): raise it or free space and retry",
    "EACCES": "permission denied: make the directory writable for this user (or point MEMLM_HOME elsewhere)",
    "EPERM": "permission denied: make the directory writable for this user (or point MEMLM_HOME elsewhere)",
    "EROFS": "the file system is read-only: point MEMLM_HOME (or the path) at a writable place",
}


def storage_error(error: BaseException, what: str, action: str = "write") -> StorageError:
    """A `StorageError` for an `OSError` or `sqlite3.OperationalError` met while writing `what`
    (`action="read"`: while reading it)."""
    import errno

    name = errno.errorcode.get(getattr(error, "errno", None) or 0, "")
    text = str(error).lower()
    if action == "read" and name in ("EACCES", "EPERM"):
        return StorageError(f"could not read {what}: permission denied: this user may not read it; fix its "
                            f"permissions (chmod/chown) or run as its owner ({error})")
    if name in _ERRNO_HINTS:
        hint = _ERRNO_HINTS[name]
    elif "locked" in text or "busy" in text:
        hint = "another process holds its write lock: close the other memlm process using it, or retry later"
    elif "full" in text or "disk i/o" in text:
        hint = "the disk is full or the file size limit was reached: free space (or raise ulimit -f) and retry"
    elif "readonly" in text or "read-only" in text or "unable to open" in text or "permission" in text:
        hint = ("it cannot be written here (read-only or missing permissions): make the directory writable, "
                "or point MEMLM_HOME elsewhere")
    else:
        hint = "the file system refused the operation"
    return StorageError(f"could not write {what}: {hint} ({error}); the last saved state is unchanged")
