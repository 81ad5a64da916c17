"""The reliability campaign's machinery, shared by `tests/reliability` (bounded) and
`benchmarks/reliability.py` (full scale).

Crash campaign. Each writer runs in a child process that writes in a loop and reports every write
on an *acknowledgement file*: a `B ...` line (unbuffered `os.write`) before the call and a `K ...`
line after the call returned. A write with a `K` line was acknowledged to the caller; the parent
kills the child with SIGKILL at a random moment, reopens the store, runs its consistency check and
verifies that every acknowledged write is there (and nothing that was never written, or was
acknowledged deleted, is). The one write in flight at the kill (a `B` without its `K`) may have
landed or not, but only whole.

Children are forked from a *zygote*: a separate interpreter started with `subprocess` that imports
numpy/faiss/torch/transformers once and forks one writer per kill, before it has run any torch op
(so no thread pools exist yet); the test process itself never forks. This keeps a kill at ~0.1-0.3 s
instead of the ~2 s an interpreter needs to import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
DIM = 16
WRITERS = ("facts", "kv", "state", "knn_state", "transcript", "server")
USERS = ("u0", "u1", "u2")


def hash_embed(texts: list[str]) -> np.ndarray:
    """A random unit vector per distinct text, seeded by its hash (no model)."""
    vectors = np.stack([np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).standard_normal(DIM)
                        for t in texts]).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def open_facts(path: Path):
    from memlm.facts.store import FactStore

    return FactStore(path, DIM, "hash")


# --- acknowledgement files --------------------------------------------------------------------------
class Acks:
    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def begin(self, *fields: Any) -> None:
        os.write(self.fd, ("B " + json.dumps(fields) + "\n").encode())

    def ack(self, *fields: Any) -> None:
        os.write(self.fd, ("K " + json.dumps(fields) + "\n").encode())


def read_acks(path: Path) -> tuple[list[list[Any]], list[Any] | None]:
    """(acknowledged operations in order, the operation in flight or None).

    kill -9 can land inside the `os.write` of a long line (Linux cuts a regular-file write short on a
    fatal signal), so a last line without its newline is torn and dropped: a torn "B" means the store
    call never began; a torn "K" leaves its operation pending (done, but not acknowledged)."""
    acked, pending = [], None
    if not path.exists():
        return acked, pending
    *lines, _torn = path.read_text().split("\n")
    for line in lines:
        if line.startswith("B "):
            pending = json.loads(line[2:])
        elif line.startswith("K "):
            acked.append(json.loads(line[2:]))
            pending = None
    return acked, pending


# --- writers (run in the forked child) ----------------------------------------------------------------
def write_facts(directory: Path, acks: Acks, seed: int) -> None:
    rng = random.Random(seed)
    store = open_facts(directory / "facts.sqlite")
    tag = f"{os.getpid()}-{seed}"
    step = 0
    while True:
        step += 1
        user = rng.choice(USERS)
        live = [fact.id for fact in store.facts(user)] if store.has_user(user) else []
        roll = rng.random()
        if roll < 0.6 or not live:
            text = f"fact {tag} {step} {rng.random():.6f}"
            acks.begin("add", user, text)
            fact = store.add(user, text, hash_embed([text])[0], importance=1.0)
            acks.ack("add", user, fact.id, text)
        elif roll < 0.8:
            fact_id, text = rng.choice(live), f"updated {tag} {step}"
            acks.begin("update", user, fact_id, text)
            store.update(fact_id, user, text, hash_embed([text])[0])
            acks.ack("update", user, fact_id, text)
        elif roll < 0.99:
            fact_id = rng.choice(live)
            acks.begin("delete", user, fact_id)
            store.delete([fact_id], user)
            acks.ack("delete", user, fact_id)
        else:
            acks.begin("delete_all", user)
            store.delete_all(user)
            acks.ack("delete_all", user)


def _kv_layout():
    from memlm.store import GroupSpec, StoreLayout

    return StoreLayout({"attention": GroupSpec(heads=2, key_dim=16, value_dim=16)})


def write_kv(directory: Path, acks: Acks, seed: int) -> None:
    import torch

    from memlm.store import KeyValueStore

    torch.manual_seed(seed)
    rng = random.Random(seed)
    store = KeyValueStore.load(directory) if (directory / "records.sqlite").exists() else KeyValueStore(_kv_layout())
    tag = f"{os.getpid()}-{seed}"
    step = 0
    while True:
        step += 1
        count = rng.randint(1, 200)
        texts = [f"{tag}-{step}-{i}" for i in range(count)]
        store.add("attention", 0, 0, torch.randn(count, 2, 16), torch.randn(count, 2, 16),
                  [{"text": text, "sequence": step} for text in texts])
        acks.begin("save", texts)
        store.save(directory)
        acks.ack("save", texts)


def _state_model():
    sys.path.insert(0, str(TESTS))
    from tiny import tiny_model

    import memlm

    return memlm.attach(tiny_model("llama"), "recurrent")


def state_digest(model) -> str:
    from memlm.serialization import tensors_checksum

    return tensors_checksum({f"{name}.{key}": value for name, memory in model.memories.items()
                             for key, value in memory.state_tensors().items()})


def write_state(directory: Path, acks: Acks, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    model = _state_model()
    while True:
        with torch.no_grad():
            model(input_ids=torch.randint(0, 250, (1, 8)))
        digest = state_digest(model)
        acks.begin("save_state", digest)
        model.save_state(directory)
        acks.ack("save_state", digest)


def _knn_model():
    sys.path.insert(0, str(TESTS))
    from tiny import tiny_model

    import memlm

    return memlm.attach(tiny_model("llama"), "knn")


def knn_digest(model) -> str:
    """SHA-256 over what the knn memory remembers: its state tensors and its whole store (every
    group's vectors and ids, every record row's id and text)."""
    import torch

    from memlm.serialization import tensors_checksum

    memory = model.memories["knn"]
    tensors = {f"state.{key}": value for key, value in memory.state_tensors().items()}
    store = memory.store
    if store is not None:
        store.flush_records()
        for (kind, row, layer), group in sorted(store.groups.items()):
            if len(group):
                tensors.update(group.to_arrays(f"{kind}.{row}.{layer}"))
        records = sorted((record.id, record.text) for record in store.records.select())
        tensors["record_ids"] = torch.tensor([record_id for record_id, _ in records], dtype=torch.int64)
        tensors["record_texts"] = torch.frombuffer(bytearray(json.dumps([t for _, t in records]).encode() or b" "),
                                                   dtype=torch.uint8)
    return tensors_checksum(tensors)


def write_knn_state(directory: Path, acks: Acks, seed: int) -> None:
    """`MemoryModel.save_state` of the file-backed knn memory (its store is a folder beside the
    state file): load the last save, then read a few tokens and save, in a loop."""
    import torch

    from memlm.model import STATE_FILE

    torch.manual_seed(seed)
    model = _knn_model()
    if (directory / STATE_FILE).exists():
        model.load_state(directory)
    while True:
        with torch.no_grad():
            model(input_ids=torch.randint(0, 250, (1, 8)))
        digest = knn_digest(model)
        acks.begin("save_state", digest)
        model.save_state(directory)
        acks.ack("save_state", digest)


class _NoState:
    def save_state(self, directory: Any) -> None:
        pass


def write_transcript(directory: Path, acks: Acks, seed: int) -> None:
    """`ChatSession._save_turn` (the transcript append) with a stand-in model whose state saving does
    nothing: the state file has its own writer above."""
    from types import SimpleNamespace

    from memlm.chat import ChatSession

    rng = random.Random(seed)
    session = SimpleNamespace(directory=directory, model=_NoState())
    tag = f"{os.getpid()}-{seed}"
    step = 0
    while True:
        step += 1
        turn = [{"role": "user", "content": f"q {tag} {step} " + "x" * rng.randint(0, 3000)},
                {"role": "assistant", "content": f"a {tag} {step}"}]
        acks.begin("turn", [m["content"] for m in turn])
        ChatSession._save_turn(session, turn)
        acks.ack("turn", [m["content"] for m in turn])


WRITE = {"facts": write_facts, "kv": write_kv, "state": write_state, "knn_state": write_knn_state,
         "transcript": write_transcript}


# --- the zygote -------------------------------------------------------------------------------------
def server_zygote_main(workdir: str) -> None:
    """The server's zygote: import the server (torch, transformers, FastAPI, uvicorn, memlm), save a tiny
    random llama to `workdir` as the backbone, load the sentence encoder once; then fork one `memlm
    serve` per request line `{"home", "port", "log"}` on stdin, answering each with the child's pid.
    The child calls the CLI's own `serve` command (`memlm.cli.serve.serve`), the code `memlm serve`
    runs, with `--backbone` the tiny llama and `--memory bank`."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    import uvicorn  # noqa: F401

    import memlm.cli.serve
    import memlm.server  # noqa: F401
    from memlm.embeddings import sentence_encoder

    sys.path.insert(0, str(TESTS))
    from tiny import tiny_model, tiny_tokenizer

    backbone = Path(workdir) / "tiny-llama"
    if not backbone.exists():
        tiny_model("llama").save_pretrained(backbone)
        tiny_tokenizer().save_pretrained(backbone)
    sentence_encoder().encode(["warm up"])  # loaded once here, shared by every forked server
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.environ["MEMLM_HOME"] = request["home"]
                memlm.cli.serve.serve(host="127.0.0.1", port=request["port"], memory=["bank"], backbone=str(backbone),
                                      mcp=False, threads=1, log_level="warning", report=None)
            finally:
                os._exit(3)
        print(pid, flush=True)


def zygote_main() -> None:
    """Import everything once, then fork one writer per request line `{"writer", "dir", "acks", "seed"}`
    on stdin, answering each with the child's pid on stdout."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import warnings

    warnings.filterwarnings("ignore", message=".*starts untrained.*")
    import faiss  # noqa: F401
    import torch  # noqa: F401

    import memlm.chat  # noqa: F401
    import memlm.facts.store  # noqa: F401
    import memlm.model  # noqa: F401
    import memlm.store  # noqa: F401

    sys.path.insert(0, str(TESTS))
    import tiny  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                WRITE[request["writer"]](Path(request["dir"]), Acks(Path(request["acks"])), request["seed"])
            finally:
                os._exit(3)
        print(pid, flush=True)


class Zygote:
    def __init__(self, *extra: str):
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS.parent / "src"), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, str(HERE / "campaign.py"), "zygote", *extra],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout.readline().strip() == "ready", "the zygote failed to start"
        self._server_zygote: Zygote | None = None
        self._server_dir: str | None = None

    def spawn(self, writer: str, directory: Path, acks: Path, seed: int) -> int:
        return self.request({"writer": writer, "dir": str(directory), "acks": str(acks), "seed": seed})

    def request(self, request: dict[str, Any]) -> int:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def server(self) -> Zygote:
        """The server's zygote (started on first use, closed with this one)."""
        if self._server_zygote is None:
            import tempfile

            self._server_dir = tempfile.mkdtemp(prefix="memlm-server-zygote-")
            self._server_zygote = Zygote("server", self._server_dir)
        return self._server_zygote

    def close(self) -> None:
        if self._server_zygote is not None:
            self._server_zygote.close()
            shutil.rmtree(self._server_dir, ignore_errors=True)
        self.process.stdin.close()
        self.process.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"writer {pid} survived SIGKILL")
        time.sleep(0.005)


def wait_started(acks: Path, pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (acks.exists() and acks.stat().st_size > 0):
        if not _alive(pid):
            raise RuntimeError(f"the writer {pid} died before writing anything")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the writer {pid} wrote nothing in {timeout} s")
        time.sleep(0.005)


# --- verifiers (run in the parent) --------------------------------------------------------------------
@dataclass
class Outcome:
    corrupt: str | None = None  # the store failed to open or its consistency check
    lost: list[str] = field(default_factory=list)  # acknowledged writes that are missing or wrong
    phantom: list[str] = field(default_factory=list)  # data that was never written / was deleted
    acked: int = 0


class FactsModel:
    """The expected state of the fact store: {id: (user, text)}."""

    def __init__(self):
        self.facts: dict[int, tuple[str, str]] = {}

    def apply(self, op: list[Any]) -> None:
        kind = op[0]
        if kind == "add" or kind == "update":
            self.facts[op[2]] = (op[1], op[3])
        elif kind == "delete":
            self.facts.pop(op[2], None)
        elif kind == "delete_all":
            self.facts = {i: v for i, v in self.facts.items() if v[0] != op[1]}

    def verify(self, directory: Path, acks: Path) -> Outcome:
        acked, pending = read_acks(acks)
        for op in acked:
            self.apply(op)
        outcome = Outcome(acked=len(acked))
        try:
            store = open_facts(directory / "facts.sqlite")
            try:
                store.check()
                actual = {fact.id: (user, fact.text) for user in store.users() for fact in store.facts(user)}
            finally:
                store.close()
        except Exception as error:  # noqa: BLE001 - any failure to open or check is corruption
            outcome.corrupt = f"{type(error).__name__}: {error}"
            return outcome
        allowed_extra, allowed_change = set(), {}
        if pending is not None:
            kind = pending[0]
            if kind == "add":
                allowed_extra = {(pending[1], pending[2])}
            elif kind == "update":
                allowed_change = {pending[2]: (pending[1], pending[3])}
            elif kind == "delete":
                allowed_change = {pending[2]: None}
        if pending is not None and pending[0] == "delete_all":
            user = pending[1]
            mine = {i for i, v in actual.items() if v[0] == user}
            expected_mine = {i for i, v in self.facts.items() if v[0] == user}
            if mine and mine != expected_mine:
                outcome.lost.append(f"delete_all({user}) in flight left part of the user's facts")
            if not mine:  # it committed
                self.apply(pending)
        for fact_id, value in self.facts.items():
            got = actual.get(fact_id)
            if got == value:
                continue
            if fact_id in allowed_change and got == allowed_change[fact_id]:
                continue
            outcome.lost.append(f"fact {fact_id} {value} -> {got}")
        for fact_id, value in actual.items():
            if fact_id not in self.facts and value not in allowed_extra:
                outcome.phantom.append(f"fact {fact_id} {value}")
        self.facts = actual  # the in-flight write resolved one way or the other
        return outcome


class KvModel:
    def __init__(self):
        self.texts: set[str] = set()

    def verify(self, directory: Path, acks: Path) -> Outcome:
        from memlm.store import KeyValueStore

        acked, pending = read_acks(acks)
        for op in acked:
            self.texts.update(op[1])
        outcome = Outcome(acked=len(acked))
        if not (directory / "records.sqlite").exists() and not self.texts:
            return outcome
        try:
            store = KeyValueStore.load(directory)  # checks rows against vectors
            try:
                texts = [record.text for record in store.records.select()]
                count = len(store)
            finally:
                store.close()
        except Exception as error:  # noqa: BLE001
            outcome.corrupt = f"{type(error).__name__}: {error}"
            return outcome
        if count != len(texts):
            outcome.corrupt = f"{count} vectors but {len(texts)} rows"
        found = set(texts)
        outcome.lost = sorted(self.texts - found)[:10] + ([f"... {len(self.texts - found)} in all"]
                                                           if len(self.texts - found) > 10 else [])
        extra = found - self.texts
        if pending is not None and extra:
            if extra == set(pending[1]):
                extra = set()
            elif extra < set(pending[1]):
                outcome.lost.append(f"the in-flight save landed partly ({len(extra)} of {len(pending[1])})")
                extra = set()
        outcome.phantom = sorted(extra)[:10]
        self.texts = found
        return outcome


class StateModel:
    """After a kill, `load_state` must succeed and give the state of the last acknowledged save or of
    the save in flight (compared by digest)."""

    state_file = "memory_state.safetensors"
    lost_message = "the loaded state is neither the last acknowledged one nor the one in flight"

    def __init__(self):
        self.digest: str | None = None
        self._model = None

    def make_model(self):
        return _state_model()

    def load_digest(self, directory: Path) -> str:
        self._model.load_state(directory)
        return state_digest(self._model)

    def verify(self, directory: Path, acks: Path) -> Outcome:
        acked, pending = read_acks(acks)
        if acked:
            self.digest = acked[-1][1]
        outcome = Outcome(acked=len(acked))
        if self.digest is None and not (directory / self.state_file).exists():
            return outcome
        if self._model is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._model = self.make_model()
        try:
            digest = self.load_digest(directory)
        except Exception as error:  # noqa: BLE001
            outcome.corrupt = f"{type(error).__name__}: {error}"
            return outcome
        if digest != self.digest:
            if pending is not None and digest == pending[1]:
                self.digest = digest
            else:
                outcome.lost.append(self.lost_message)
        return outcome


class KnnStateModel(StateModel):
    """The pair (state file, store folder) of the last acknowledged save or of the save in flight:
    never a store of one save with the state of another (the digest covers both)."""

    lost_message = "the loaded (state, store) pair is neither the last acknowledged save nor the one in flight"

    @property
    def state_file(self) -> str:
        from memlm.model import STATE_FILE

        return STATE_FILE

    def make_model(self):
        return _knn_model()

    def load_digest(self, directory: Path) -> str:
        memory = self._model.memories["knn"]
        try:
            self._model.load_state(directory)
            return knn_digest(self._model)
        finally:
            if memory.store is not None:  # let go of the folder: the next writer's save removes it
                memory.store.close()
                memory.store = None
            memory.reset()


class TranscriptModel:
    def __init__(self):
        self.contents: list[str] = []

    def verify(self, directory: Path, acks: Path) -> Outcome:
        from memlm.chat import read_transcript

        acked, pending = read_acks(acks)
        for op in acked:
            self.contents.extend(op[1])
        outcome = Outcome(acked=len(acked))
        path = directory / "transcript.jsonl"
        try:
            found = [message["content"] for message in read_transcript(path)]
        except Exception as error:  # noqa: BLE001
            outcome.corrupt = f"{type(error).__name__}: {error}"
            return outcome
        if found[:len(self.contents)] != self.contents:
            outcome.lost.append(f"transcript prefix differs ({len(found)} messages found, "
                                f"{len(self.contents)} acknowledged)")
        extra = found[len(self.contents):]
        if extra and not (pending is not None and extra == pending[1][:len(extra)]):
            outcome.phantom.append(f"{len(extra)} unexpected message(s)")
        self.contents = found
        return outcome


MODELS = {"facts": FactsModel, "kv": KvModel, "state": StateModel, "knn_state": KnnStateModel,
          "transcript": TranscriptModel}
# random kill delay after start, seconds
WINDOWS = {"facts": 0.3, "kv": 0.4, "state": 0.3, "knn_state": 0.4, "transcript": 0.15, "server": 0.5}


@dataclass
class CrashReport:
    writer: str
    kills: int = 0
    corrupt: int = 0
    lost: int = 0
    phantom: int = 0
    acked: int = 0
    examples: list[str] = field(default_factory=list)
    startup_s: list[float] = field(default_factory=list)  # the server: seconds from fork to its first answer

    def to_dict(self) -> dict[str, Any]:
        extra = {}
        if self.startup_s:
            ordered = sorted(self.startup_s)
            extra = {"restart_s": {"median": round(ordered[len(ordered) // 2], 3), "max": round(ordered[-1], 3)}}
        return {"writer": self.writer, "kills": self.kills, "corrupt": self.corrupt, "lost_acknowledged": self.lost,
                "phantom": self.phantom, "acknowledged_writes": self.acked, "examples": self.examples[:5], **extra}


def crash_campaign(writer: str, directory: Path, kills: int, seed: int = 0, zygote: Zygote | None = None
                   ) -> CrashReport:
    """Kill `writer` `kills` times at random moments; verify the store after each kill."""
    if writer == "server":
        return server_crash_campaign(directory, kills, seed, zygote)
    own = zygote is None
    zygote = zygote or Zygote()
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    store_dir = directory / "store"
    store_dir.mkdir(exist_ok=True)
    model = MODELS[writer]()
    report = CrashReport(writer)
    try:
        for number in range(kills):
            acks = directory / f"acks-{number}.log"
            pid = zygote.spawn(writer, store_dir, acks, seed * 100_003 + number)
            wait_started(acks, pid)
            time.sleep(rng.uniform(0.0, WINDOWS[writer]))
            kill(pid)
            outcome = model.verify(store_dir, acks)
            report.kills += 1
            report.acked += outcome.acked
            report.corrupt += outcome.corrupt is not None
            report.lost += len(outcome.lost)
            report.phantom += len(outcome.phantom)
            report.examples += [f"kill {number}: {text}" for text in
                                ([outcome.corrupt] if outcome.corrupt else []) + outcome.lost + outcome.phantom]
            acks.unlink()
            if outcome.corrupt:  # start again from an empty store, so later kills still measure something
                shutil.rmtree(store_dir)
                store_dir.mkdir()
                model = MODELS[writer]()
    finally:
        if own:
            zygote.close()
    return report


# --- the server under load as a writer ---------------------------------------------------------------
SERVER_USERS = ("s0", "s1", "s2", "s3")  # one HTTP client per user, each the only writer of its user


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_call(connection, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    """One request on a kept-alive `http.client` connection; (status, parsed JSON body)."""
    headers = {"Authorization": f"Bearer {key}"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    data = response.read()
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, data.decode(errors="replace")


class ServerHome:
    """A home folder with one API key per user, and `memlm serve` processes (forked from the server
    zygote) serving it on a fresh port each start."""

    def __init__(self, directory: Path, zygote: Zygote, users: tuple[str, ...] = SERVER_USERS):
        from memlm.server.keys import KeyStore, keys_path

        self.home = directory / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.zygote = zygote.server()
        self.log = directory / "serve.log"
        with KeyStore(keys_path(self.home)) as store:
            self.keys = {user: store.create(user) for user in users}
        self.pid: int | None = None
        self.port = 0

    def start(self, timeout: float = 120.0) -> float:
        """Start a server and wait until it answers; returns the seconds that took."""
        import http.client

        started = time.monotonic()
        self.port = free_port()
        self.pid = self.zygote.request({"home": str(self.home), "port": self.port, "log": str(self.log)})
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                status, _ = http_call(connection, "GET", "/v1/server", "")
                connection.close()
                if status == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            if not _alive(self.pid):
                raise RuntimeError(f"memlm serve exited before answering; log: {self.log.read_text()[-2000:]}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"memlm serve did not answer in {timeout} s")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.pid is not None and _alive(self.pid):
            kill(self.pid)
        self.pid = None

    def facts_file(self) -> Path:
        return self.home / "facts.sqlite"

    def open_store(self):
        return open_server_store(self.facts_file())


def open_server_store(path: Path):
    """The server's fact store file, opened directly (MiniLM's width and name, without loading it)."""
    from memlm.embeddings import MINILM_DIMENSION
    from memlm.facts.api import ENCODERS
    from memlm.facts.store import FactStore

    return FactStore(path, MINILM_DIMENSION, ENCODERS["minilm"])


_WORD_TEXT = ("apple river stone violin mountain coffee garden window rocket silver teacher ocean pencil castle "
         "thunder banana lantern meadow engine poetry harbor tiger glacier bakery compass velvet orchid canyon "
         "dragon mirror puzzle saddle walnut crystal falcon island jungle kettle ladder magnet nectar oyster "
         "parrot quartz ribbon sphinx tractor umbrella vortex wizard yogurt zebra anchor blossom cobalt dolphin "
         "ember fossil gravel helmet igloo jasmine kayak lemon marble noodle opal pepper quiver raven saffron")
WORDS = _WORD_TEXT.split()


def distinct_text(rng: random.Random, *prefix: Any) -> str:
    """A text unlike the others to the sentence encoder (the memory API drops near-duplicates)."""
    return " ".join([*map(str, prefix), *rng.sample(WORDS, 7), str(rng.randint(0, 10**9))])


class ServerClient:
    """A client of the HTTP memory API writing (add / update / delete / delete_all) for one user until
    stopped or the connection fails. `acked` lists the writes answered 2xx, in order; `pending` is the
    write sent whose answer never came."""

    def __init__(self, server: ServerHome, user: str, seed: int, owned: dict[int, str]):
        self.server, self.user, self.key = server, user, server.keys[user]
        self.rng = random.Random(seed)
        self.owned = dict(owned)  # this user's facts as the client believes them
        self.acked: list[list[Any]] = []
        self.pending: list[Any] | None = None
        self.errors: list[str] = []
        self.tag = f"{seed}"

    def run(self, stop) -> None:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        step = 0
        try:
            while not stop.is_set():
                step += 1
                roll = self.rng.random()
                if roll < 0.6 or not self.owned:
                    text = distinct_text(self.rng, self.user, step)
                    op = ["add", self.user, text]
                    self.pending = op
                    status, body = http_call(connection, "POST", "/v1/memories", self.key,
                                        {"messages": text, "infer": False})
                    if status == 200:
                        added = [r for r in body["results"] if r["event"] == "ADD"]
                        if len(added) != 1 or added[0]["memory"] != text:
                            self.errors.append(f"add answered {body}")
                        else:
                            self.owned[int(added[0]["id"])] = text
                            self.acked.append(["add", self.user, int(added[0]["id"]), text])
                elif roll < 0.8:
                    fact_id, text = self.rng.choice(sorted(self.owned)), distinct_text(self.rng, self.user, "now", step)
                    op = ["update", self.user, fact_id, text]
                    self.pending = op
                    status, body = http_call(connection, "PUT", f"/v1/memories/{fact_id}", self.key, {"text": text})
                    if status == 200:
                        self.owned[fact_id] = text
                        self.acked.append(op)
                elif roll < 0.99:
                    fact_id = self.rng.choice(sorted(self.owned))
                    op = ["delete", self.user, fact_id]
                    self.pending = op
                    status, body = http_call(connection, "DELETE", f"/v1/memories/{fact_id}", self.key)
                    if status == 200:
                        del self.owned[fact_id]
                        self.acked.append(op)
                else:
                    op = ["delete_all", self.user]
                    self.pending = op
                    status, body = http_call(connection, "DELETE", "/v1/memories", self.key)
                    if status == 200:
                        self.owned = {}
                        self.acked.append(op)
                self.pending = None
                if status != 200:
                    self.errors.append(f"{op[0]} answered {status}: {str(body)[:200]}")
        except (OSError, http.client.HTTPException):
            return  # the server was killed: `pending` (if any) is the write in flight
        finally:
            connection.close()


class ServerModel(FactsModel):
    """The expected state of the server's fact store, from every client's acknowledged writes; the
    writes in flight at the kill (at most one per client) may have landed, whole, or not."""

    def verify_server(self, server: ServerHome, clients: list[ServerClient]) -> Outcome:
        acked = [op for client in clients for op in client.acked]
        for op in acked:
            self.apply(op)
        outcome = Outcome(acked=len(acked))
        outcome.lost += [f"client error: {error}" for client in clients for error in client.errors]
        try:
            store = server.open_store()
            try:
                store.check()
                actual = {fact.id: (user, fact.text) for user in store.users() for fact in store.facts(user)}
            finally:
                store.close()
        except Exception as error:  # noqa: BLE001 - any failure to open or check is corruption
            outcome.corrupt = f"{type(error).__name__}: {error}"
            return outcome
        pendings = [client.pending for client in clients if client.pending is not None]
        extra_ok = {(op[1], op[2]) for op in pendings if op[0] == "add"}
        change_ok = {op[2]: (op[1], op[3]) for op in pendings if op[0] == "update"}
        change_ok.update({op[2]: None for op in pendings if op[0] == "delete"})
        for op in pendings:
            if op[0] == "delete_all":
                mine = {i for i, v in actual.items() if v[0] == op[1]}
                if mine and mine != {i for i, v in self.facts.items() if v[0] == op[1]}:
                    outcome.lost.append(f"delete_all({op[1]}) in flight left part of the user's facts")
                if not mine:
                    self.apply(op)
        for fact_id, value in self.facts.items():
            got = actual.get(fact_id)
            if got != value and not (fact_id in change_ok and got == change_ok[fact_id]):
                outcome.lost.append(f"fact {fact_id} {value} -> {got}")
        for fact_id, value in actual.items():
            if fact_id not in self.facts and value not in extra_ok:
                outcome.phantom.append(f"fact {fact_id} {value}")
        self.facts = actual
        return outcome


def _server_round(server: ServerHome, model: ServerModel, rng: random.Random, seed: int, window: float
                  ) -> tuple[list[ServerClient], float]:
    """Start the server, let one client per user write, kill -9 the server at a random moment while
    they do; returns the clients (what each saw) and the restart time."""
    startup = server.start()
    owned = {user: {i: v[1] for i, v in model.facts.items() if v[0] == user} for user in server.keys}
    clients = [ServerClient(server, user, seed * 1009 + number, owned[user])
               for number, user in enumerate(server.keys)]
    stop = threading.Event()
    threads = [threading.Thread(target=client.run, args=(stop,), daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while not any(client.acked for client in clients) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, window))
    server.stop()
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    return clients, startup


def server_crash_campaign(directory: Path, kills: int, seed: int = 0, zygote: Zygote | None = None
                          ) -> CrashReport:
    """`memlm serve` under load (one HTTP client per user writing facts through the memory API) is
    killed with SIGKILL `kills` times; after each kill the store opens, passes `FactStore.check()` and
    holds every write the server answered 2xx; then the server is started again on it, and it must
    list every user's facts as modelled."""
    import http.client

    own = zygote is None
    zygote = zygote or Zygote()
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    server = ServerHome(directory, zygote)
    model = ServerModel()
    report = CrashReport("server")
    startups: list[float] = []
    try:
        for number in range(kills):
            clients, startup = _server_round(server, model, rng, seed * 100_003 + number, WINDOWS["server"])
            startups.append(startup)
            outcome = model.verify_server(server, clients)
            report.kills += 1
            report.acked += outcome.acked
            report.corrupt += outcome.corrupt is not None
            report.lost += len(outcome.lost)
            report.phantom += len(outcome.phantom)
            report.examples += [f"kill {number}: {text}" for text in
                                ([outcome.corrupt] if outcome.corrupt else []) + outcome.lost + outcome.phantom]
            if outcome.corrupt:
                raise RuntimeError(f"the server's store is corrupt after kill {number}: {outcome.corrupt}")
        # the restarted server serves what the store holds
        server.start()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for user, key in server.keys.items():
            status, body = http_call(connection, "GET", "/v1/memories?limit=1000", key)
            listed = {int(item["id"]): item["memory"] for item in body["results"]} if status == 200 else None
            expected = {i: v[1] for i, v in model.facts.items() if v[0] == user}
            if listed != expected:
                report.lost += 1
                report.examples.append(f"after restart, {user}'s listing differs from the store "
                                       f"({status}, {len(listed or {})} vs {len(expected)} facts)")
        connection.close()
        server.stop()
    finally:
        server.stop()
        if own:
            zygote.close()
    report.startup_s = startups
    return report


def server_power_loss_campaign(directory: Path, copies: int, seed: int = 0, zygote: Zygote | None = None
                               ) -> dict[str, Any]:
    """Copy the server's fact store files while clients write through it; each copy must open."""
    own = zygote is None
    zygote = zygote or Zygote()
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    server = ServerHome(directory, zygote)
    failures: list[str] = []
    try:
        server.start()
        clients = [ServerClient(server, user, seed + i, {}) for i, user in enumerate(server.keys)]
        stop = threading.Event()
        threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
        for thread in threads:
            thread.start()
        while not any(c.acked for c in clients):
            time.sleep(0.005)
        for number in range(copies):
            time.sleep(rng.uniform(0.0, 0.05))
            copy = directory / f"copy-{number}"
            copy.mkdir()
            for _ in range(50):
                try:
                    for suffix in ("", "-wal"):
                        source = Path(f"{server.facts_file()}{suffix}")
                        if source.exists():
                            shutil.copyfile(source, copy / f"facts.sqlite{suffix}")
                    break
                except FileNotFoundError:
                    continue
            try:
                copied = open_server_store(copy / "facts.sqlite")
                copied.check()
                copied.close()
            except Exception as error:  # noqa: BLE001
                failures.append(f"copy {number}: {type(error).__name__}: {error}")
            shutil.rmtree(copy)
        stop.set()
        server.stop()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        server.stop()
        if own:
            zygote.close()
    return {"writer": "server", "copies": copies, "unopenable": len(failures), "examples": failures[:5]}


# --- power loss: copy the files while a writer runs --------------------------------------------------
def power_loss_campaign(writer: str, directory: Path, copies: int, seed: int = 0, zygote: Zygote | None = None
                        ) -> dict[str, Any]:
    """Copy the writer's files (as a crash of the whole machine would leave them, roughly: each
    file's bytes at some moment) while it runs; each copy must open and pass its check."""
    if writer == "server":
        return server_power_loss_campaign(directory, copies, seed, zygote)
    own = zygote is None
    zygote = zygote or Zygote()
    rng = random.Random(seed)
    store_dir = directory / "store"
    store_dir.mkdir(parents=True, exist_ok=True)
    acks = directory / "acks.log"
    failures: list[str] = []
    pid = zygote.spawn(writer, store_dir, acks, seed)
    try:
        wait_started(acks, pid)
        for number in range(copies):
            time.sleep(rng.uniform(0.0, 0.05))
            copy = directory / f"copy-{number}"
            _snapshot(store_dir, copy)
            problem = _open_copy(writer, copy)
            if problem:
                failures.append(f"copy {number}: {problem}")
            shutil.rmtree(copy)
    finally:
        kill(pid)
        if own:
            zygote.close()
    return {"writer": writer, "copies": copies, "unopenable": len(failures), "examples": failures[:5]}


def _snapshot(source: Path, target: Path) -> None:
    """Copy every file of `source`, byte by byte as they are now; if a file vanishes between listing
    and copying (a save deleted a stale generation), start again: a machine that loses power sees
    one directory listing, not two."""
    for _ in range(50):
        shutil.rmtree(target, ignore_errors=True)
        try:
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
            return
        except (shutil.Error, FileNotFoundError):
            continue
    raise RuntimeError(f"could not snapshot {source}: files kept vanishing")


def _open_copy(writer: str, copy: Path) -> str | None:
    try:
        if writer == "facts":
            store = open_facts(copy / "facts.sqlite")
            store.check()
            store.close()
        elif writer == "kv":
            from memlm.store import KeyValueStore

            if (copy / "records.sqlite").exists():
                KeyValueStore.load(copy).close()
        elif writer == "state":
            from memlm.serialization import load_tensors

            if (copy / "memory_state.safetensors").exists():
                load_tensors(copy / "memory_state.safetensors")
        elif writer == "knn_state":
            from memlm.model import STATE_FILE

            if (copy / STATE_FILE).exists():
                model = _knn_model()
                model.load_state(copy)
                model.memories["knn"].store.close()
        elif writer == "transcript":
            from memlm.chat import read_transcript

            read_transcript(copy / "transcript.jsonl")
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {error}"
    return None


# --- concurrency: many users on one fact store --------------------------------------------------------
def open_memory(path: Path, encoder: str = "hash"):
    """A `memlm.Memory` on `path`: hash vectors (no model), or the real MiniLM encoder (`minilm`, what
    the server uses: a store shared with a server must be on the server's encoder)."""
    from memlm.facts import FactMemory

    if encoder == "minilm":
        return FactMemory(path)
    return FactMemory(path, embed=hash_embed, encoder="hash", dimension=DIM)


class _ApiMemory:
    """The memory API of a running server, for one user (its key), shaped like `memlm.Memory`'s
    methods that `user_session` calls; any answer but 200 raises."""

    def __init__(self, port: int, key: str):
        import http.client

        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.key = key

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = http_call(self.connection, method, path, self.key, body)
        if status != 200:
            raise RuntimeError(f"{method} {path} answered {status}: {str(answer)[:300]}")
        return answer

    def add(self, text: str, user_id: str, infer: bool) -> dict[str, Any]:
        return self._call("POST", "/v1/memories", {"messages": text, "infer": infer})

    def search(self, query: str, user_id: str, limit: int) -> dict[str, Any]:
        return self._call("POST", "/v1/memories/search", {"query": query, "limit": limit})

    def update(self, fact_id: int, text: str, user_id: str) -> dict[str, Any]:
        return self._call("PUT", f"/v1/memories/{fact_id}", {"text": text})

    def delete(self, fact_id: int, user_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/memories/{fact_id}")

    def get_all(self, user_id: str) -> dict[str, Any]:
        return self._call("GET", "/v1/memories?limit=1000")

    def close(self) -> None:
        self.connection.close()


def user_session(memory, user: str, seconds: float, seed: int) -> dict[str, Any]:
    """One user doing mixed add / search / update / delete / get_all on `memory` (a `memlm.Memory`,
    or `_ApiMemory`: the same calls through a server's HTTP API) for `seconds`, keeping its own model
    of what it stored (it is the only writer of its user)."""
    rng = random.Random(seed)
    model: dict[int, str] = {}
    errors, foreign, ops, step = [], [], 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        step += 1
        ops += 1
        roll = rng.random()
        try:
            if roll < 0.4 or not model:
                text = distinct_text(rng, user, "note", step)
                for entry in memory.add(text, user_id=user, infer=False)["results"]:
                    if entry["event"] == "ADD":
                        model[int(entry["id"])] = entry["memory"]
            elif roll < 0.7:
                hits = memory.search(distinct_text(rng, user), user_id=user, limit=5)["results"]
                foreign += [f"search gave {hit['user_id']}'s fact {hit['id']}" for hit in hits
                            if hit["user_id"] != user]
                foreign += [f"search gave unknown fact {hit['id']}" for hit in hits if int(hit["id"]) not in model]
            elif roll < 0.85:
                fact_id = rng.choice(sorted(model))
                text = distinct_text(rng, user, "changed", step)
                model[fact_id] = memory.update(fact_id, text, user_id=user)["memory"]
            elif roll < 0.95:
                fact_id = rng.choice(sorted(model))
                memory.delete(fact_id, user_id=user)
                del model[fact_id]
            else:
                listed = memory.get_all(user_id=user)["results"]
                foreign += [f"get_all gave {entry['user_id']}'s fact" for entry in listed if entry["user_id"] != user]
                got = {int(entry["id"]): entry["memory"] for entry in listed}
                if got != model:
                    errors.append(f"get_all disagrees with the model ({len(got)} vs {len(model)} facts)")
        except Exception as error:  # noqa: BLE001 - every exception is a failure here
            errors.append(f"{type(error).__name__}: {error}")
    return {"user": user, "ops": ops, "errors": errors, "foreign": foreign, "model": model}


def user_process_main(path: str, user: str, seconds: float, seed: int, encoder: str = "hash") -> None:
    memory = open_memory(Path(path), encoder)
    print("ready", flush=True)
    result = user_session(memory, user, seconds, seed)
    memory.close()
    print(json.dumps({**result, "model": {str(k): v for k, v in result["model"].items()}}), flush=True)


def rest_of_output(child: subprocess.Popen, timeout: float) -> str:
    """What `child` writes to its stdout pipe after what was read with `readline`, once it exits.
    Not `communicate(timeout=...)`: that reads the raw pipe and misses what `readline` had already
    buffered, which is the whole result when the child finished before its "ready" line was read."""
    timer = threading.Timer(timeout, child.kill)  # a hung child ends the read instead of the test run
    timer.start()
    try:
        out = child.stdout.read()
    finally:
        timer.cancel()
    child.wait()
    return out


def concurrency_campaign(path: Path, users: int, seconds: float, processes: int | None = None,
                         seed: int = 0, server_clients: int = 0, zygote: Zygote | None = None) -> dict[str, Any]:
    """`users` users at once on one store file: `server_clients` of them HTTP clients of a running
    `memlm serve` on that file (each with its own API key), `processes` (default: a third, or half
    without a server) separate processes with their own `Memory`, the rest threads sharing one
    `Memory` (one SQLite connection). With a server every user embeds with the server's encoder
    (MiniLM); without, with hash vectors. Every user's facts are then compared with its model, and
    `delete_all` of one user must remove exactly that user."""
    if processes is None:
        processes = (users - server_clients) // 2
    names = [f"user{i:03d}" for i in range(users)]
    thread_names = names[processes:users - server_clients]
    api_names = names[users - server_clients:]
    encoder = "minilm" if server_clients else "hash"
    server = None
    own_zygote = zygote is None and server_clients > 0
    if server_clients:
        zygote = zygote or Zygote()
        server = ServerHome(path.parent / "server", zygote, users=tuple(api_names))
        path = server.facts_file()
        server.start()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS.parent / "src"), os.environ.get("PYTHONPATH")]))}
    try:
        memory = open_memory(path, encoder)
        children = [subprocess.Popen([sys.executable, str(HERE / "campaign.py"), "user", str(path), name,
                                      str(seconds), str(seed + i), encoder], stdout=subprocess.PIPE, text=True, env=env)
                    for i, name in enumerate(names[:processes])]
        for child in children:  # every process has loaded what it needs before the clock of the others starts
            assert child.stdout.readline().strip() == "ready", "a user process failed to start"
        results: list[dict[str, Any]] = []
        threads = [threading.Thread(target=lambda n=name, i=i: results.append(
                       user_session(memory, n, seconds, seed + i)))
                   for i, name in enumerate(names) if name in thread_names]
        api_memories = [_ApiMemory(server.port, server.keys[name]) for name in api_names] if server else []
        threads += [threading.Thread(target=lambda n=name, m=api, i=i: results.append(
                        {**user_session(m, n, seconds, seed + 1000 + i), "via": "server"}))
                    for i, (name, api) in enumerate(zip(api_names, api_memories, strict=True))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for api in api_memories:
            api.close()
        for child in children:
            out = rest_of_output(child, timeout=seconds + 300)
            if child.returncode != 0:
                results.append({"user": "?", "ops": 0, "errors": [f"process exited {child.returncode}"],
                                "foreign": [], "model": {}})
                continue
            result = json.loads(out.strip().splitlines()[-1])
            results.append({**result, "model": {int(k): v for k, v in result["model"].items()}})
        if server is not None:
            server.stop()  # SIGKILL: what the server acknowledged must be on disk already
        report: dict[str, Any] = {
            "users": users, "threads": len(thread_names), "processes": processes, "server_clients": server_clients,
            "encoder": encoder, "seconds": seconds, "ops": sum(r["ops"] for r in results),
            "ops_via_server": sum(r["ops"] for r in results if r.get("via") == "server"),
            "errors": sum(len(r["errors"]) for r in results),
            "foreign_results": sum(len(r["foreign"]) for r in results),
            "lost_writes": 0, "phantom": 0, "examples": []}
        for r in results:
            report["examples"] += [f"{r['user']}: {text}" for text in (r["errors"] + r["foreign"])[:2]]
        fresh = open_memory(path, encoder)  # read back through a new connection: what is on disk
        fresh.store.check()
        expected = {r["user"]: r["model"] for r in results}
        if len(expected) != users:
            report["errors"] += 1
            report["examples"].append(f"{len(expected)} of {users} users reported")
        for name, model in expected.items():
            got = {int(e["id"]): e["memory"] for e in fresh.get_all(user_id=name)["results"]} \
                if fresh.store.has_user(name) else {}
            report["lost_writes"] += sum(1 for i, text in model.items() if got.get(i) != text)
            report["phantom"] += sum(1 for i in got if i not in model)
        victim = names[0]
        if fresh.store.has_user(victim):
            fresh.delete_all(user_id=victim)
        survivors_ok = all(
            ({int(e["id"]): e["memory"] for e in fresh.get_all(user_id=name)["results"]}
             if fresh.store.has_user(name) else {}) == model
            for name, model in expected.items() if name != victim)
        report["delete_all_exact"] = (survivors_ok and not fresh.get_all(user_id=victim)["results"]
                                      and not fresh.store.count(victim, include_inactive=True))
        fresh.store.check()
        fresh.close()
        memory.close()
    finally:
        if server is not None:
            server.stop()
        if own_zygote:
            zygote.close()
    return report


if __name__ == "__main__":
    if sys.argv[1:] == ["zygote"]:
        zygote_main()
    elif sys.argv[1:3] == ["zygote", "server"]:
        server_zygote_main(sys.argv[3])
    elif sys.argv[1] == "user":
        user_process_main(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), *sys.argv[6:7])
