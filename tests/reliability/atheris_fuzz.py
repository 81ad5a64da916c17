"""Coverage-guided fuzzing (atheris / libFuzzer) of every file loader memlm has.

    python tests/reliability/atheris_fuzz.py --runs 1000 [--targets tensors,facts,...] [--out report.json]

Each target gets the bytes libFuzzer generates (starting from a seed corpus of valid files, so the
mutations reach past the headers) written to a file, and the loader reads that file. The only
outcomes allowed are a result or a `memlm.MemlmError`: any other exception is a crash; libFuzzer's
`-timeout` catches a hang (one input running longer than it) and `-rss_limit_mb` unbounded memory.

memlm's modules are imported under `atheris.instrument_imports(include=["memlm"])`, so libFuzzer sees
which branches of memlm each input reaches and keeps the inputs that reach new ones. The heavy
imports (torch, faiss, memlm) happen once, in this process; each target then runs in a child forked
from it (atheris runs one `Fuzz()` per process), with its own libFuzzer options, and the report
(JSON, one entry per target: runs done, exit status, the crash's traceback and input file) is
printed and written to `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import atheris

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import faiss  # noqa: E402,F401  (imported uninstrumented, before memlm)
import numpy  # noqa: E402,F401
import torch  # noqa: E402
import yaml  # noqa: E402,F401

with atheris.instrument_imports(include=["memlm"]):
    import memlm  # noqa: F401
    import memlm.backbone
    import memlm.chat
    import memlm.config
    import memlm.facts.store
    import memlm.model
    import memlm.serialization
    import memlm.store
    import memlm.train.config
    import memlm.train.data
    from memlm.errors import MemlmError

TARGETS = ("tensors", "state", "facts", "kv_records", "kv_vectors", "jsonl", "yaml", "gguf_manifest")


# --- seed corpora: valid files of each kind -----------------------------------------------------------
def _seeds(target: str, work: Path) -> list[bytes]:
    from campaign import DIM, hash_embed

    from memlm.serialization import save_tensors

    make = work / "seed"
    shutil.rmtree(make, ignore_errors=True)
    make.mkdir()
    if target == "tensors":
        save_tensors(make / "t.safetensors", {"a": torch.randn(3, 4), "b": torch.arange(5)}, {"format": "memlm-state"})
        return [(make / "t.safetensors").read_bytes()]
    if target == "state":
        model = _state_model()
        with torch.no_grad():
            model(input_ids=torch.randint(0, 250, (1, 6)))
        model.save_state(make)
        return [(make / memlm.model.STATE_FILE).read_bytes()]
    if target == "facts":
        store = memlm.facts.store.FactStore(make / "facts.sqlite", DIM, "hash")
        for i in range(4):
            store.add(f"user{i % 2}", f"fact number {i}", hash_embed([f"fact number {i}"])[0], importance=1.0)
        store.close()
        return [(make / "facts.sqlite").read_bytes()]
    if target in ("kv_records", "kv_vectors"):
        kv = _kv_seed(make / "kv")
        kv.close()
        name = "records.sqlite" if target == "kv_records" else "vectors-000001.safetensors"
        return [(make / "kv" / name).read_bytes()]
    if target == "jsonl":
        lines = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"},
                 {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                 {"text": "plain text example"}]
        return [("\n".join(json.dumps(line) for line in lines) + "\n").encode(),
                (json.dumps(lines[2]) + "\n").encode()]
    if target == "yaml":
        return [path.read_bytes() for path in sorted((ROOT / "configs").rglob("*.yaml"))]
    if target.startswith("selftest"):
        return [b"seed"]
    if target == "gguf_manifest":
        import hashlib

        return [json.dumps({"files": {"weights.bin": {"size": 5, "sha256": hashlib.sha256(b"12345").hexdigest()}},
                            "source": "x.gguf"}).encode()]
    raise ValueError(target)


def _state_model():
    import warnings

    from tiny import tiny_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memlm.attach(tiny_model("llama"), "recurrent")


def _kv_seed(directory: Path):
    from memlm.store import GroupSpec, KeyValueStore, StoreLayout

    kv = KeyValueStore(StoreLayout({"attention": GroupSpec(heads=1, key_dim=4, value_dim=4)}))
    kv.add("attention", 0, 0, torch.randn(3, 1, 4), torch.randn(3, 1, 4), [{"text": f"r{i}"} for i in range(3)])
    kv.save(directory)
    return kv


# --- the targets: bytes -> file -> loader ---------------------------------------------------------------
def _target(name: str, work: Path):
    from campaign import DIM, hash_embed

    path = work / "input"
    if name == "tensors":
        def run(data: bytes) -> None:
            path.write_bytes(data)
            memlm.serialization.load_tensors(path)
    elif name == "state":
        model = _state_model()
        folder = work / "state"
        folder.mkdir()

        def run(data: bytes) -> None:
            (folder / memlm.model.STATE_FILE).write_bytes(data)
            model.load_state(folder)
    elif name == "facts":
        query = hash_embed(["fact"])[0]
        database = work / "facts.sqlite"

        def run(data: bytes) -> None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{database}{suffix}").unlink(missing_ok=True)
            database.write_bytes(data)
            store = memlm.facts.store.FactStore(database, DIM, "hash")
            try:
                store.check()
                for user in store.users():
                    store.facts(user)
                    store.search(user, query, 3)
            finally:
                store.close()
    elif name in ("kv_records", "kv_vectors"):
        valid = work / "valid-kv"
        _kv_seed(valid).close()
        directory = work / "kv"
        damaged = "records.sqlite" if name == "kv_records" else "vectors-000001.safetensors"

        def run(data: bytes) -> None:
            shutil.rmtree(directory, ignore_errors=True)
            shutil.copytree(valid, directory)
            for suffix in ("-wal", "-shm"):
                (directory / f"records.sqlite{suffix}").unlink(missing_ok=True)
            (directory / damaged).write_bytes(data)
            memlm.store.KeyValueStore.load(directory).close()
    elif name == "jsonl":
        reader = SimpleNamespace(tokenizer=None)
        jsonl = work / "input.jsonl"

        def run(data: bytes) -> None:
            jsonl.write_bytes(data)
            with contextlib.suppress(MemlmError):
                memlm.chat.read_transcript(jsonl)
            memlm.train.data.TrainingData._file_example_source(reader, jsonl)
    elif name == "yaml":
        def run(data: bytes) -> None:
            path.write_bytes(data)
            with contextlib.suppress(MemlmError):
                memlm.train.config.TrainConfig.from_yaml(path)
            memlm.config.load_configs(path)
    elif name == "gguf_manifest":
        cache = work / "cache"
        cache.mkdir()
        (cache / "weights.bin").write_bytes(b"12345")

        def run(data: bytes) -> None:
            (cache / memlm.backbone.CACHE_MANIFEST).write_bytes(data)
            memlm.backbone.verify_cache(cache)
    elif name == "selftest_crash":  # the harness's own check: a loader that raises a plain exception
        def run(data: bytes) -> None:
            raise RuntimeError("selftest: an untyped exception escaped")
    elif name == "selftest_hang":  # ... and one that never returns
        def run(data: bytes) -> None:
            time.sleep(3600)
    else:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")

    def one_input(data: bytes) -> None:
        with contextlib.suppress(MemlmError):  # a typed refusal is allowed; anything else propagates: a crash
            run(data)

    return one_input


def _child(name: str, work: Path, options: list[str]) -> None:
    """Runs in the forked child: seed corpus, then libFuzzer's loop (never returns)."""
    corpus = work / "corpus"
    corpus.mkdir()
    for number, seed in enumerate(_seeds(name, work)):
        (corpus / f"seed-{number}").write_bytes(seed)
    one_input = _target(name, work)
    atheris.Setup([sys.argv[0], *options, f"-artifact_prefix={work}/", str(corpus)], one_input)
    atheris.Fuzz()


def fuzz_target(name: str, runs: int, max_seconds: int, timeout_s: int, rss_mb: int, work: Path) -> dict:
    """Fork a child that fuzzes `name` for `runs` inputs; collect what libFuzzer reported."""
    work.mkdir(parents=True)
    log = work / "libfuzzer.log"
    options = [f"-runs={runs}", f"-max_total_time={max_seconds}", f"-timeout={timeout_s}",
               f"-rss_limit_mb={rss_mb}", "-print_final_stats=1", "-seed=17", "-max_len=65536"]
    started = time.perf_counter()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            _child(name, work, options)
        except SystemExit as done:
            os._exit(done.code if isinstance(done.code, int) else 1)
        except BaseException:  # noqa: BLE001 - a failure before libFuzzer started
            import traceback

            traceback.print_exc()
            os._exit(70)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    done = re.findall(r"Done (\d+) runs in (\d+) second", text)
    executed = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", text)
    crash = re.search(r"=== Uncaught Python exception: ===\n(.*?)(?:\n==\d+==|\nINFO:|\Z)", text, re.S)
    artifacts = sorted(str(p) for p in work.glob("crash-*")) + sorted(str(p) for p in work.glob("timeout-*")) \
        + sorted(str(p) for p in work.glob("oom-*"))
    progress = [int(number) for number in re.findall(r"^#(\d+)\s", text, re.M)]  # libFuzzer's status lines
    result = {"target": name,
              "runs": int(executed[-1]) if executed else (int(done[-1][0]) if done else max(progress, default=0)),
              "requested": runs, "exit_code": code, "seconds": round(time.perf_counter() - started, 1),
              "coverage": {"cov": int(coverage[-1][0]), "ft": int(coverage[-1][1])} if coverage else None,
              "passed": code == 0 and bool(done)}
    if not result["passed"]:
        result["crash"] = (crash.group(1).strip()[-3000:] if crash else text[-3000:])
        result["artifacts"] = artifacts
        for kind in ("timeout", "out-of-memory"):
            if f"ERROR: libFuzzer: {kind}" in text:
                result["crash"] = f"libFuzzer: {kind}\n" + result["crash"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="inputs per target")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--max-seconds", type=int, default=3600, help="libFuzzer -max_total_time per target")
    parser.add_argument("--timeout", type=int, default=20, help="libFuzzer -timeout: seconds one input may take")
    parser.add_argument("--rss-mb", type=int, default=3072, help="libFuzzer -rss_limit_mb")
    parser.add_argument("--keep", type=Path, help="keep the work folders (crash inputs) here")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="memlm-atheris-") as scratch:
        base = args.keep or Path(scratch)
        for name in args.targets.split(","):
            result = fuzz_target(name, args.runs, args.max_seconds, args.timeout, args.rss_mb, base / name)
            results.append(result)
            print(json.dumps(result), flush=True)
    from importlib.metadata import version

    report = {"tool": f"atheris {version('atheris')}", "runs_per_target": args.runs,
              "targets": results, "passed": all(r["passed"] for r in results)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
