"""Mutation testing of memlm's core modules with mutmut 3 (`make mutate`; docs/testing.md).

mutmut reads its settings from ./pyproject.toml and copies the source and tests into ./mutants, so each
group (a module and the few test files that cover it) runs in a folder of its own, .mutate/<group>/, made
afresh from this checkout with that group's [tool.mutmut] settings. A group may name only some of its
module's functions (a sample, said so in the table). Results: .mutate/<group>.json and a Markdown table.

    python tools/mutate.py                          # every group
    python tools/mutate.py eval-scoring store-records --jobs 2
    python tools/mutate.py --list
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutate"


@dataclass
class Group:
    module: str  # a file under src/
    tests: list[str]  # pytest arguments selecting the tests that cover it
    functions: list[str] = field(default_factory=list)  # mutant-name globs; empty: the whole module
    note: str = ""


GROUPS: dict[str, Group] = {
    "eval-scoring": Group("src/memlm/eval/scoring.py", ["tests/eval/test_scoring.py"]),
    "eval-perplexity": Group("src/memlm/eval/perplexity.py", ["tests/eval/test_perplexity.py"]),
    "store-records": Group("src/memlm/store/records.py",
                           ["tests/store/test_records.py", "tests/store/test_store.py", "tests/store/test_backends.py",
                            "-k",
                            "not kill_during_save and not postgres and not milvus and not writer"]),
    "store-kv-store": Group("src/memlm/store/kv_store.py",
                            ["tests/store/test_kv_store.py", "tests/store/test_store.py",
                             "tests/store/test_backends.py", "-k",
                             "not kill_during_save and not postgres and not milvus and not writer"]),
    "store-index": Group("src/memlm/store/index.py",  # the store's index tests only: the rest go through files
                         ["tests/store/test_index.py", "tests/store/test_store.py", "-k",
                          "test_index.py or agree or remove_save or ivf_searches or fewer_vectors or two_stage"]),
    "store-sqlite": Group("src/memlm/store/sqlite.py",
                          ["tests/store/test_sqlite.py", "tests/store/test_records.py", "tests/store/test_kv_store.py",
                           "tests/store/test_store.py",
                           "-k", "not kill_during_save"]),
    "facts-store": Group("src/memlm/facts/store.py",  # not the tests of minutes: other processes, kills, MiniLM
                         ["tests/facts/test_api.py", "tests/facts/test_turns.py", "-k",
                          "not (postgres or milvus or process or killed or classic or learned_at_once)"]),
    "facts-bank-retrieval": Group("src/memlm/facts/bank.py",  # sqlite only: the server backends repeat these tests
                                  ["tests/facts/test_bank.py", "tests/facts/test_conversations.py",
                                   "tests/facts/test_bank_retrieval.py", "-k", "not (postgres or milvus)"],
                                  ["*ǁFactBankǁretrieve__*", "*ǁFactBankǁevict__*", "*ǁFactBankǁdecayed_importance__*",
                                   "*ǁFactBankǁ_conversation_fusion__*", "*x__hybrid_weight__*"],
                                  "sample: retrieval, ranking, decay and eviction"),
    "facts-api-helpers": Group("src/memlm/facts/api.py",  # sqlite only: the server backends repeat these tests
                               ["tests/facts/test_api_inputs.py", "tests/facts/test_mem0_api.py",
                                "tests/facts/test_mem0_dropin.py", "tests/facts/test_api.py", "-k",
                                "not (postgres or milvus or process or killed or classic or learned_at_once "
                                "or from_config_builds)"],  # that test checks a warning's frame: mutmut adds one
                               ["*x__count__*", "*x__threshold__*", "*x__as_messages__*", "*x__memory__*",
                                "*x__event__*", "*x__change__*", "*ǁFactMemoryǁ_owner__*",
                                "*ǁFactMemoryǁ_refuse_cross_user_scope__*", "*ǁFactMemoryǁ_accept__*",
                                "*ǁFactMemoryǁ_expiry__*"],
                               "sample: scoping (owner, cross-user refusal, filters), expiry, counts and the "
                               "mem0-shaped records"),
    "facts-bank-supersession": Group("src/memlm/facts/bank.py",  # sqlite only, as facts-bank-retrieval
                                     ["tests/facts/test_bank_learning.py", "tests/facts/test_bank_retrieval.py",
                                      "tests/facts/test_updates.py", "tests/facts/test_bank.py", "-k",
                                      "not (postgres or milvus)"],
                                     ["*ǁFactBankǁ_superseded_by__*", "*ǁFactBankǁ_nearest__*",
                                      "*ǁFactBankǁlearn__*", "*x_slot_key__*", "*x__fills__*"],
                                     "sample: learn's entry, the near-duplicate and supersession searches"),
    "facts-filters": Group("src/memlm/facts/filters.py", ["tests/facts/test_filters.py"]),
    "facts-slots": Group("src/memlm/facts/slots.py", ["tests/facts/test_updates.py"]),
    "facts-connection": Group("src/memlm/facts/connection.py",
                              ["tests/facts/test_connection.py", "tests/store/test_sqlite.py",
                               "tests/facts/test_store.py"]),
    "facts-records": Group("src/memlm/facts/records.py",
                           ["tests/facts/test_store.py", "tests/facts/test_api.py", "-k", "sqlite or store"]),
    "train-resume": Group("src/memlm/train/trainer.py",
                          ["tests/train/test_trainer.py", "-k", "resuming or not_a_trainer"],
                          ["*x__rng_state__*", "*x__set_rng_state__*", "*ǁTrainerǁ_resume__*"],
                          "resume only: restoring weights, optimizer, schedule, step and the random generators"),
    "memories-knn": Group("src/memlm/memories/knn/memory.py",
                          ["tests/memories/test_knn.py", "-k", "temperature or knn_lm"],
                          ["*ǁKnnMemoryǁ_mix_logits__*"], "sample: the kNN-LM mixture (_mix_logits)"),
    "memories-knn-attention": Group("src/memlm/memories/knn/attention.py",
                                    ["tests/memories/test_knn_attention.py", "tests/memories/test_knn.py", "-k",
                                     "joint or rotat or fixed_placement or gated or gather or stack"]),
    "memories-knn-retrieval": Group("src/memlm/memories/knn/memory.py",
                                    ["tests/memories/test_knn.py", "-k",
                                     "joint or rotating or fixed_placement or gated or cluster"],
                                    ["*ǁKnnMemoryǁ_retrieve__*", "*ǁKnnMemoryǁ_stream_block__*"],
                                    "sample: retrieval (_retrieve, _stream_block)"),
    "memories-bank": Group("src/memlm/memories/bank.py",
                           ["tests/memories/test_bank_adapter.py", "tests/memories/test_bank.py"]),
    "memories-recurrent": Group("src/memlm/memories/recurrent.py",
                                ["tests/memories/test_recurrent.py", "-k", "not trainable"]),
    "memories-slots": Group("src/memlm/memories/slots.py", ["tests/memories/test_slots.py", "-k", "not trainable"]),
    "memories-units": Group("src/memlm/memories/units.py", ["tests/memories/test_units.py", "-k", "not default_model"]),
    "memories-importance": Group("src/memlm/memories/importance.py",
                                 ["tests/memories/test_importance.py", "tests/memories/test_units.py", "-k",
                                  "not default_model"],
                                 ["*x_select_tokens__*", "*x_cap_tokens__*", "*ǁImportanceMemoryǁ_store__*",
                                  "*ǁImportanceMemoryǁwrite__*", "*ǁImportanceMemoryǁrewrite_inputs__*",
                                  "*ǁImportanceMemoryǁadd_tokens__*"],
                                 "sample: selection, capacity, storing and riding along (select_tokens, cap_tokens, "
                                 "write, _store, rewrite_inputs, add_tokens)"),
    "facts-ranking": Group("src/memlm/facts/ranking.py", ["tests/facts/test_ranking.py"]),
    "facts-vector-index": Group("src/memlm/facts/vector_index.py", ["tests/facts/test_vector_index.py"]),
    "facts-lexical": Group("src/memlm/facts/lexical.py", ["tests/facts/test_lexical.py"]),
    "facts-update": Group("src/memlm/facts/api.py", ["tests/facts/test_api.py", "-k", "sqlite or each_alone"],
                          ["*ǁFactMemoryǁupdate__*"], "sample: FactMemory.update"),
    "facts-extraction": Group("src/memlm/facts/extraction.py", ["tests/facts/test_extraction.py"]),
    "store-clusters": Group("src/memlm/store/clusters.py", ["tests/store/test_clusters.py"]),
    "facts-mem0-config": Group("src/memlm/facts/mem0_config.py", ["tests/facts/test_mem0_dropin.py"]),
    "store-group": Group("src/memlm/store/group.py",
                         ["tests/store/test_group.py", "tests/store/test_group_search.py",
                          "tests/store/test_kv_store.py", "tests/store/test_store.py", "tests/store/test_clusters.py",
                          "tests/store/test_backends.py", "tests/store/test_fused_topk.py", "-k",
                          "not kill_during_save and not postgres and not milvus and not writer"]),
}


def workdir(name: str, group: Group) -> Path:
    """.mutate/<name>: src, tests, configs and a pyproject.toml whose [tool.mutmut] is this group's."""
    directory = WORK / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "mutants")
    for part in ("src", "tests", "configs"):
        shutil.copytree(ROOT / part, directory / part, ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = re.sub(r"\n\[tool\.mutmut\].*?(?=\n\[|\Z)", "\n", pyproject, flags=re.S)
    settings = {"source_paths": ["src/memlm"], "only_mutate": [group.module],
                "pytest_add_cli_args_test_selection": group.tests,
                "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q"], "process_isolation": "forkserver"}
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    (directory / "pyproject.toml").write_text(pyproject.rstrip() + "\n\n[tool.mutmut]\n" + "\n".join(lines) + "\n")
    return directory


def run_group(name: str, group: Group, jobs: int, collect: bool = False) -> dict:
    """Run the group's mutants afresh, or (`collect`) only read what its last run left in .mutate/<name>:
    a run stopped early (kill the `mutmut run` process, not this one) keeps every mutant tested so far."""
    mutmut = [sys.executable, "-m", "mutmut"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    started = time.monotonic()
    if collect:
        directory = WORK / name
    else:
        directory = workdir(name, group)
        log = (WORK / f"{name}.log").open("w")
        subprocess.run([*mutmut, "run", "--max-children", str(jobs), *group.functions], cwd=directory, env=env,
                       stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    listing = subprocess.run([*mutmut, "results", "--all", "true"], cwd=directory, env=env, capture_output=True,
                             text=True, check=False).stdout
    statuses: dict[str, str] = {}
    for line in listing.splitlines():
        if ":" in line:
            mutant, status = (part.strip() for part in line.rsplit(":", 1))
            if group.functions and not any(re.fullmatch(glob.replace("*", ".*"), mutant) for glob in group.functions):
                continue
            statuses[mutant] = status
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    functions = mutant_functions((directory / "mutants" / group.module).read_text())
    diffs = {mutant: mutant_diff(functions, mutant) for mutant, status in statuses.items()
             if status not in ("killed", "timeout")}
    result = {"group": name, "module": group.module, "tests": " ".join(group.tests),
              "scope": group.note or "whole module", "counts": counts, "seconds": round(seconds),
              "not_killed": diffs}
    (WORK / f"{name}.json").write_text(json.dumps(result, indent=2))
    return result


def mutant_functions(mutated: str) -> dict[str, list[str]]:
    """The body of every function in mutmut's mutated copy of a module, where each mutant is a function
    `<name>__mutmut_<n>` beside the original `<name>__mutmut_orig`."""
    lines = mutated.splitlines()
    return {node.name: lines[node.lineno:node.end_lineno] for node in ast.walk(ast.parse(mutated))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in node.name}


def mutant_diff(functions: dict[str, list[str]], mutant: str) -> str:
    """The lines `mutant` changes (`mutmut show` costs seconds a mutant: a process each)."""
    name = mutant.rsplit(".", 1)[-1]
    original = name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
    if name not in functions or original not in functions:
        return f"(no source found for {mutant})"
    changed = difflib.unified_diff(functions[original], functions[name], lineterm="", n=0)
    return "\n".join(line for line in changed if line[:1] in "+-" and not line.startswith(("+++", "---")))


def table(results: list[dict]) -> str:
    rows = ["| group | module | scope | mutants | killed | survived | timeout | other | killed % | tests |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        counts = dict(result["counts"])
        total = sum(counts.values())
        killed, survived, timeout = counts.pop("killed", 0), counts.pop("survived", 0), counts.pop("timeout", 0)
        other = ", ".join(f"{status} {count}" for status, count in counts.items()) or "0"
        score = f"{100 * (killed + timeout) / total:.1f}" if total else "-"
        rows.append(f"| {result['group']} | `{result['module']}` | {result['scope']} | {total} | {killed} | "
                    f"{survived} | {timeout} | {other} | {score} | `{result['tests']}` |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("groups", nargs="*", choices=[[], *GROUPS], metavar="GROUP")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--list", action="store_true", help="list the groups and stop")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: report what the groups' last (possibly stopped) runs left in .mutate/")
    args = parser.parse_args()
    if args.list:
        for name, group in GROUPS.items():
            print(f"{name}: {group.module} ({group.note or 'whole module'}) <- {' '.join(group.tests)}")
        return 0
    WORK.mkdir(exist_ok=True)
    results = [run_group(name, GROUPS[name], args.jobs, args.collect) for name in args.groups or GROUPS]
    print(table(results))
    for result in results:
        for mutant, diff in result["not_killed"].items():
            print(f"\n--- not killed: {mutant}\n{diff.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
