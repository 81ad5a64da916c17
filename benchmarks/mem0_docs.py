"""mem0's own documentation as a test of `memlm.Memory`: every Python snippet of mem0's open-source
docs and README that uses `Memory` / `AsyncMemory`, run with the import changed to memlm's.

Give the path of a mem0 checkout (not shipped with memlm; e.g. `git clone github.com/mem0ai/mem0`):

    python benchmarks/mem0_docs.py /path/to/mem0 --out mem0_docs.json --table mem0_docs.md
    # LLM calls of the snippets (the `openai` client) sent to a running `memlm serve`:
    python benchmarks/mem0_docs.py /path/to/mem0 --openai-base-url http://127.0.0.1:8000/v1

How: the README and every `.mdx` page outside mem0's hosted platform (`docs/platform`,
`docs/api-reference`, the migration to the platform) are read; their ```python blocks are run in
order, one page at a time, in one namespace per page (a page's snippets build on each other), with
`from mem0 import Memory` / `AsyncMemory` rewritten to `from memlm import ...`, a fresh memlm home
per page, `input()` answering "exit", and a time limit per snippet. A snippet is reported when it
uses `Memory` / `AsyncMemory`, or a name a reported snippet of its page bound to one:

* `passes`: it ran to the end;
* `skipped (why)`: it needs mem0's hosted platform (`MemoryClient`), a package that is not installed,
  an LLM that no server was given for, a service at an address, or a snippet before it that did not
  run; or it is not runnable as written (placeholders);
* `differs (why)`: it raised; the error is the reason.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

_FENCE = re.compile(r"^([ \t]*)```(\w+)[^\n]*\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
_USES_MEMORY = re.compile(r"\b(?:Async)?Memory\b(?!Client)")
_BINDS_MEMORY = re.compile(r"^\s*(\w+)\s*=\s*(?:await\s+)?(?:mem0\.)?(?:Async)?Memory(?:\.from_config)?\s*\(",
                           re.MULTILINE)
_PLATFORM = re.compile(r"\bMemoryClient\b|AsyncMemoryClient|MEM0_API_KEY|api\.mem0\.ai")
_EXCLUDED = ("docs/platform/", "docs/api-reference/", "docs/migration/oss-to-platform", "docs/migration/platform-",
             "docs/templates/")
SNIPPET_SECONDS = 120


@dataclass
class Snippet:
    page: str
    number: int  # its place among the page's python blocks, from 1
    line: int
    code: str
    reported: bool = False
    status: str = ""
    reason: str = ""

    @property
    def first_line(self) -> str:
        lines = [line.strip() for line in self.code.splitlines() if line.strip() and not line.strip().startswith("#")]
        return (lines[0] if lines else "")[:70]


def pages(checkout: Path) -> list[Path]:
    found = [checkout / "README.md", *sorted((checkout / "docs").rglob("*.mdx"))]
    return [page for page in found if page.exists()
            and not any(page.relative_to(checkout).as_posix().startswith(prefix) for prefix in _EXCLUDED)]


def snippets_of(page: Path, checkout: Path) -> list[Snippet]:
    text = page.read_text(encoding="utf-8", errors="replace")
    if not re.search(r"from mem0 import[^\n]*\b(?:Async)?Memory\b(?!Client)", text):
        return []
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(2).lower() not in ("python", "py"):
            continue
        code = textwrap.dedent(match.group(3))
        blocks.append(Snippet(page.relative_to(checkout).as_posix(), len(blocks) + 1,
                              text.count("\n", 0, match.start()) + 1, code))
    bound: set[str] = set()
    for block in blocks:
        if _PLATFORM.search(block.code):
            block.reported = "from mem0 import" in block.code and bool(_USES_MEMORY.search(block.code))
            continue
        bound |= set(_BINDS_MEMORY.findall(block.code))
        names = "|".join(map(re.escape, bound))
        uses_bound = bool(names) and re.search(rf"\b(?:{names})\.\w+\(", block.code) is not None
        block.reported = bool(_USES_MEMORY.search(block.code)) or uses_bound
    return blocks


def to_memlm(code: str) -> str:
    code = re.sub(r"from mem0 import ([^\n]+)", lambda m: f"from memlm import {m.group(1)}"
                  if "Client" not in m.group(1) else m.group(0), code)
    return re.sub(r"^import mem0\b", "import memlm as mem0", code, flags=re.MULTILINE)


class _Timeout(Exception):
    pass


def _defined_in(name: str, page_code: str) -> bool:
    """Whether any snippet of the page binds `name` (assignment, def, class, import, for, with ... as)."""
    return re.search(rf"(?:^|\n)\s*(?:{re.escape(name)}\s*(?::[^=\n]*)?=|(?:async\s+)?def\s+{re.escape(name)}\b|"
                     rf"class\s+{re.escape(name)}\b)|import[^\n]*\b{re.escape(name)}\b|\bas\s+{re.escape(name)}\b|"
                     rf"for\s+[^\n]*\b{re.escape(name)}\b[^\n]*\bin\b", page_code) is not None


def _classify(error: BaseException, code: str, earlier_failed: bool, llm_server: bool,
              page_code: str = "") -> tuple[str, str]:
    message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:160]
    if isinstance(error, SyntaxError):
        return "skipped", f"not runnable as written ({message})"
    if isinstance(error, ModuleNotFoundError):
        missing = (error.name or "").split(".")[0]
        if missing == "mem0":
            return "differs", f"imports mem0's internals ({error.name})"
        return "skipped", f"needs the package {missing!r}, not installed here"
    module = type(error).__module__.split(".")[0]
    if module in ("openai", "httpx", "httpcore", "anthropic", "litellm") or "api_key" in str(error).lower():
        why = "the LLM call failed: " if llm_server else "calls an LLM and no server was given: "
        return "skipped", why + message
    if isinstance(error, (ConnectionError, OSError)) and re.search(r"localhost|host|port|https?://", code):
        return "skipped", f"needs a service at an address ({message})"
    if isinstance(error, KeyError) and re.search(rf"os\.environ\[[\"']{re.escape(str(error.args[0]))}[\"']\]", code):
        return "skipped", f"needs the environment variable {error.args[0]} (a service's address or key)"
    placeholder = re.search(r"""["']((?:mem|memory)[-_](?:\d+|xyz|abc|id[-_]here)|[\w-]*id[-_]here|"""
                            r"""your[-_][\w-]*id)["']""", code)
    if placeholder and placeholder.group(1) in str(error):
        return "skipped", f"uses a placeholder id ({placeholder.group(1)!r}), which names no memory (in mem0 either)"
    if isinstance(error, NameError) and earlier_failed:
        return "skipped", f"needs a snippet before it that did not run ({message})"
    if isinstance(error, NameError) and error.name and not _defined_in(error.name, page_code):
        return "skipped", f"a fragment: its page never defines {error.name!r}"
    if isinstance(error, _Timeout):
        return "differs", f"still running after {SNIPPET_SECONDS} s"
    return "differs", message


def run_page(blocks: list[Snippet], llm_server: bool) -> None:
    """Run one page's blocks in order in one namespace (called in a child process, see `main`)."""
    namespace: dict = {"__name__": "__main__"}
    # a chat loop gets one message about the user, one question about it, then "exit"
    answers = iter((["I just adopted a cat called Miso.", "What is my cat called?"] if llm_server else [])
                   + ["exit"] * 5)
    if llm_server:
        _any_model_is_the_servers()

    def fake_input(prompt: str = "") -> str:
        try:
            return next(answers)
        except StopIteration:
            raise EOFError("no more input") from None

    builtins.input = fake_input

    def on_alarm(*_: object) -> None:
        raise _Timeout()

    signal.signal(signal.SIGALRM, on_alarm)
    earlier_failed = False
    page_code = "\n".join(block.code for block in blocks)
    for block in blocks:
        if _PLATFORM.search(block.code) and block.reported:
            block.status, block.reason = "skipped", "mem0's hosted platform (MemoryClient)"
            continue
        code = to_memlm(block.code)
        try:
            compiled = compile(code, f"{block.page}:{block.line}", "exec", flags=0x2000)  # top-level await allowed
        except SyntaxError as error:
            block.status, block.reason = _classify(error, code, earlier_failed, llm_server, page_code)
            earlier_failed = True
            continue
        signal.alarm(SNIPPET_SECONDS)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = eval(compiled, namespace)  # noqa: S307 - the point is to run the docs' code
                if hasattr(result, "__await__"):
                    import asyncio

                    asyncio.run(_awaited(result))
            block.status = "passes"
        except (Exception, SystemExit, _Timeout) as error:  # noqa: BLE001 - every failure is a finding
            if isinstance(error, SystemExit) and not error.code:
                block.status = "passes"
            else:
                block.status, block.reason = _classify(error, code, earlier_failed, llm_server, page_code)
                earlier_failed = True
                if os.environ.get("MEM0_DOCS_TRACE"):
                    traceback.print_exc()
        finally:
            signal.alarm(0)


def _any_model_is_the_servers() -> None:
    """A snippet names OpenAI's models ("gpt-5-mini"); `memlm serve` answers as its default model."""
    try:
        from openai.resources.chat import completions
    except ImportError:
        return
    for name in ("Completions", "AsyncCompletions"):
        cls = getattr(completions, name)
        original = cls.create

        def create(self, *args, _original=original, **kwargs):
            kwargs["model"] = "default"
            return _original(self, *args, **kwargs)

        cls.create = create


async def _awaited(result: object) -> object:
    return await result  # type: ignore[misc]


def _child(arguments: list[str]) -> None:
    request = json.loads(sys.stdin.read())
    blocks = [Snippet(**block) for block in request["blocks"]]
    run_page(blocks, request["llm_server"])
    sys.__stdout__.write("\n@@RESULT@@" + json.dumps([asdict(block) for block in blocks]))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", help="a mem0 repository checkout")
    parser.add_argument("--out", help="all snippets and their status, as JSON")
    parser.add_argument("--table", help="the Markdown table of the reported snippets")
    parser.add_argument("--openai-base-url", help="send the snippets' openai client calls here (`memlm serve`)")
    parser.add_argument("--previous", help="an earlier --out: its results stand for the pages not run now")
    parser.add_argument("--pages", help="only pages whose path contains one of these texts (comma-separated)")
    args = parser.parse_args()
    checkout = Path(args.checkout)
    environment = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    environment.pop("MEMLM_STORE", None)
    if args.openai_base_url:
        environment.update(OPENAI_BASE_URL=args.openai_base_url, OPENAI_API_KEY="memlm-local")
    else:
        environment.pop("OPENAI_API_KEY", None)
    source = str(Path(__file__).resolve().parents[1] / "src")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environment.get("PYTHONPATH")]))
    results: list[Snippet] = []
    for page in pages(checkout):
        if args.pages and not any(part in page.as_posix() for part in args.pages.split(",")):
            continue
        blocks = snippets_of(page, checkout)
        if not any(block.reported for block in blocks):
            continue
        with tempfile.TemporaryDirectory() as home:
            request = json.dumps({"blocks": [asdict(b) for b in blocks], "llm_server": bool(args.openai_base_url)})
            try:
                done = subprocess.run([sys.executable, __file__, "--child"], input=request, capture_output=True,
                                      text=True, cwd=home, env={**environment, "MEMLM_HOME": home},
                                      timeout=SNIPPET_SECONDS * (len(blocks) + 1))
                output = done.stdout.rsplit("@@RESULT@@", 1)
                if len(output) == 2:
                    blocks = [Snippet(**block) for block in json.loads(output[1])]
                else:
                    for block in blocks:
                        block.status, block.reason = "differs", f"the page's process ended: {done.stderr[-160:]!r}"
            except subprocess.TimeoutExpired:
                for block in blocks:
                    block.status = block.status or "differs"
                    block.reason = block.reason or "the page's process ran out of time"
        reported = [block for block in blocks if block.reported]
        results.extend(reported)
        for block in reported:
            print(f"{block.status:8} {block.page}#{block.number} {block.reason}", flush=True)
    if args.previous:  # keep the earlier results of the pages not run this time, in their order
        ran = {block.page for block in results}
        earlier = [Snippet(**{key: value for key, value in entry.items() if key != "first_line"}, code="")
                   for entry in json.loads(Path(args.previous).read_text(encoding="utf-8"))["snippets"]]
        for block, entry in zip(earlier, json.loads(Path(args.previous).read_text(encoding="utf-8"))["snippets"],
                                strict=True):
            block.code = entry["first_line"]
        fresh = {(block.page, block.number): block for block in results}
        order = [(block.page, block.number) for block in earlier if block.page not in ran or
                 (block.page, block.number) in fresh]
        merged = [fresh.get(key) or next(b for b in earlier if (b.page, b.number) == key) for key in order]
        results = merged + [block for block in results if (block.page, block.number) not in set(order)]
    counts = {status: sum(b.status == status for b in results) for status in ("passes", "skipped", "differs")}
    print(json.dumps(counts))
    if args.out:
        Path(args.out).write_text(json.dumps({"counts": counts, "snippets": [
            {k: v for k, v in asdict(b).items() if k != "code"} | {"first_line": b.first_line} for b in results]},
            indent=1) + "\n", encoding="utf-8")
    if args.table:
        rows = ["| snippet | result |", "|---|---|"]  # where, not what: mem0's code stays in mem0's repository
        for block in results:
            verdict = (block.status + (f" ({block.reason})" if block.reason else "")).replace("|", "/")
            rows.append(f"| `{block.page}` #{block.number} (line {block.line}) | {verdict.replace('`', chr(39))} |")
        Path(args.table).write_text("\n".join(rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
