"""Safe, atomic, verified files.

Everything memlm saves goes through here: tensors as safetensors (never pickle), JSON as text.
Writes go to a temporary file in the target directory and are renamed over the target, so a crash
mid-save leaves the previous file intact. Tensor files carry a SHA-256 of their payload in the
safetensors header; loading verifies it, so truncation *and* silent bit flips are reported as
`CorruptedFileError` instead of being loaded as wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_dumps

from memlm.errors import CorruptedFileError, StorageError, storage_error

CHECKSUM_KEY = "memlm.sha256"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the new one, never half."""
    _atomic_write(Path(path), lambda handle: handle.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def _atomic_write(path: Path, write: Callable) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise storage_error(error, str(path)) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, StorageError):
            raise storage_error(error, str(path)) from error
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not supported on every platform, and harmless to skip.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptedFileError(f"{path} is not valid JSON ({error})") from error


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Save tensors atomically as safetensors; `metadata` values are stored as JSON strings."""
    cpu_tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    header = {key: json.dumps(value) for key, value in (metadata or {}).items()}
    header[CHECKSUM_KEY] = tensors_checksum(cpu_tensors)
    atomic_write_bytes(path, safetensors_dumps(cpu_tensors, metadata=header))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a file written by `save_tensors`; returns (tensors, metadata).

    Raises `FileNotFoundError` if it does not exist and `CorruptedFileError` if it cannot be parsed
    or its checksum does not match.
    """
    path = Path(path)
    try:
        with path.open("rb"):  # a file we may not read is a permission problem, not a damaged file
            pass
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except PermissionError as error:
        raise storage_error(error, str(path), "read") from error
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types and plain exceptions
        raise CorruptedFileError(f"{path} is not a readable safetensors file ({error})") from error
    expected = header.pop(CHECKSUM_KEY, None)
    if expected is None:
        raise CorruptedFileError(f"{path} has no memlm checksum: it was not written by memlm")
    if tensors_checksum(tensors) != expected:
        raise CorruptedFileError(f"{path} is corrupted: its checksum does not match its contents")
    try:
        metadata = {key: json.loads(value) for key, value in header.items()}
    except json.JSONDecodeError as error:
        raise CorruptedFileError(f"{path} has an unreadable header ({error})") from error
    return tensors, metadata
