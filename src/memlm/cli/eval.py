"""`memlm eval`: the comparison suite (the group's own callback), and single evaluations as
subcommands: `eval ppl` (long-document perplexity) and `eval recall` (multi-session recall)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from memlm.cli.options import (
    BackboneOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MemoryOpt,
    comma_list,
    console,
    friendly_errors,
    memory_names,
    read_text,
)

app = typer.Typer(help="Evaluate memories against baselines.", invoke_without_command=True)


@app.callback()
@friendly_errors
def eval_suite(
    ctx: typer.Context,
    suite: Annotated[str | None, typer.Option(
        help="quick (about 15 min on 2 CPU cores, lengths up to 16K; the default when other options "
             "are given) or full (a GPU; up to 128K)")] = None,
    memory: Annotated[str | None, typer.Option(
        "--memory", "-m", help="contenders, comma-separated: baselines none, full, rag, any mechanism or "
                               "preset name, or a folder of trained weights [default: the suite's list]")] = None,
    tasks: Annotated[str, typer.Option(
        help="task families, comma-separated: babilong, babilong-unseen (the same stories about people and "
             "places training never saw), needle (free-form facts and a pass key; not run by default), "
             "followup, recall, ppl, continual, generation; or single tasks (babilong/qa3, needle/facts)")] =
        "babilong,babilong-unseen,followup,recall,ppl,continual,generation",
    cast: Annotated[str | None, typer.Option(
        help="who the BABILong stories are about: standard (bAbI's people and places), unseen (names, places "
             "and objects training never draws) or both, side by side; rewrites babilong tasks in --tasks "
             "[default: as --tasks names them]")] = None,
    window: Annotated[int, typer.Option(min=64, help="context window W of none, rag and the memories")] = 1024,
    out: Annotated[Path, typer.Option(help="folder for results.json, results.md, plots and the pair cache "
                                           "(finished pairs are reused when rerun)")] = Path("eval-results"),
    samples: Annotated[int | None, typer.Option(min=1, help="override the suite's samples per length")] = None,
    lengths: Annotated[str | None, typer.Option(
        help="override the suite's BABILong lengths in tokens, e.g. 0,1K,4K,16K (K = 1024)")] = None,
    haystack: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="your own text to hide the BABILong facts in [default: the Paul Graham essays]")] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="samples answered side by side, one per batch row (a GPU takes 100)")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print accuracy per task x length x contender as JSON")] = False,
    max_new_tokens: Annotated[int | None, typer.Option(
        min=1, help="override the suite's answer length in tokens for BABILong and generation (16)")] = None,
    answer_tokens: Annotated[int | None, typer.Option(
        min=1, help="override the answer length in tokens for the recall questions (multi-session, "
                    "continual facts; 32)")] = None,
    report: Annotated[bool, typer.Option(help="write results.json/.md and plots (off: only the pair cache)")] = True,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="run the pairs as Ray tasks on the cluster at this address ('local': start one here; "
                      "'auto': the one `ray start` made); results equal a serial run's")] = None,
    ray_gpus: Annotated[float | None, typer.Option(
        "--ray-gpus", min=0, help="with --ray: the share of a GPU each pair asks for [default: 0.125 on cuda "
                                  "(8 pairs per GPU at once), else 0]")] = None,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Compare every memory mechanism and the baselines on the same tasks: `memlm eval --suite quick`.
    Subcommands run single evaluations."""
    if ctx.invoked_subcommand is not None:
        return
    if suite is None:
        # By name: typer may bring its own copy of click's ParameterSource.
        if not any(getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE" for name in ctx.params):
            console.print(ctx.get_help())  # bare `memlm eval`: what it can do
            raise typer.Exit(0)
        suite = "quick"  # `memlm eval --tasks babilong/qa1 --haystack my.txt ...` runs on the quick suite
    from memlm import load_backbone
    from memlm.eval.harness import DEFAULT_CONTENDERS, run_suite

    contenders = DEFAULT_CONTENDERS.get(suite, DEFAULT_CONTENDERS["quick"]) if memory is None else comma_list(memory)
    families = with_cast(comma_list(tasks), cast)
    overrides: dict[str, Any] = {}
    if samples is not None:
        overrides["samples"] = samples
    if lengths is not None:
        overrides["lengths"] = tuple(parse_length(value) for value in comma_list(lengths))
        overrides["long_lengths"] = ()  # exactly the lengths asked for
    if haystack is not None:
        overrides["babilong_haystack"] = str(haystack.resolve())
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if max_new_tokens is not None:
        overrides["max_new_tokens"] = max_new_tokens
    if answer_tokens is not None:
        overrides["answer_tokens"] = answer_tokens
    model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
    started = time.perf_counter()
    written = run_suite(model, tokenizer, suite, list(contenders), out, window=window,
                        backbone_name=Path(backbone).name if backbone else "SmolLM2-135M-Instruct",
                        families=families, command="memlm " + " ".join(sys.argv[1:]), report=report,
                        progress=not as_json, ray=ray, ray_backbone=backbone, device=device, dtype=dtype,
                        ray_gpus=ray_gpus, **overrides)
    if as_json:
        print(json.dumps(accuracy_table(out), indent=2))
        return
    console.print(f"finished in {(time.perf_counter() - started) / 60:.1f} min; wrote "
                  f"{', '.join(str(path) for path in written.values())}")


def with_cast(tasks: list[str], cast: str | None) -> list[str]:
    """`tasks` with each BABILong family or task told about the `cast` asked for.

    >>> with_cast(["babilong/qa1", "recall"], "both")
    ['babilong/qa1', 'babilong-unseen/qa1', 'recall']
    """
    if cast is None:
        return tasks
    if cast not in ("standard", "unseen", "both"):
        raise typer.BadParameter(f"{cast!r}: choose standard, unseen or both", param_hint="--cast")
    prefixes = {"standard": ["babilong"], "unseen": ["babilong-unseen"], "both": ["babilong", "babilong-unseen"]}[cast]
    rewritten: list[str] = []
    for task in tasks:
        family, _, name = task.partition("/")
        if family in ("babilong", "babilong-unseen"):
            rewritten += [prefix + ("/" + name if name else "") for prefix in prefixes]
        else:
            rewritten.append(task)
    return list(dict.fromkeys(rewritten))


def parse_length(value: str) -> int:
    """A token count: 4096, 4K or 4k (K = 1024), 1M (M = 1024 K)."""
    text = value.strip().upper()
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    try:
        return int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a length in tokens (e.g. 4096, 4K or 1M)", param_hint="--lengths") \
            from None


def accuracy_table(out: Path) -> dict[str, Any]:
    """Every accuracy record of the run folder's cached pairs: {task: {length: {contender: {value, n, ci95}}}}."""
    table: dict[str, Any] = {}
    for path in sorted((out / "pairs").glob("*.json")):
        pair = json.loads(path.read_text(encoding="utf-8"))
        for record in pair.get("records", []):
            if record.get("metric") != "accuracy":
                continue
            cell = table.setdefault(record["task"], {}).setdefault(str(record["length"]), {})
            cell[pair["contender"]] = {"accuracy": record["value"], "n": record["n"], "ci95": record.get("ci95")}
    return table


@app.command("ppl")
@friendly_errors
def eval_ppl(
    file: Annotated[Path | None, typer.Argument(exists=True, dir_okay=False, help="UTF-8 text file to score")] = None,
    corpus: Annotated[str | None, typer.Option(help="score a packaged corpus (see `memlm corpus list`)")] = None,
    window: Annotated[int, typer.Option(min=2, help="tokens each segment sees in its context")] = 512,
    memory: MemoryOpt = None,
    max_tokens: Annotated[int | None, typer.Option(min=2, help="score only the first N tokens")] = None,
    reference_context: Annotated[int | None, typer.Option(
        help="also score each segment with this many tokens of real context, no memory (the ceiling)")] = None,
    as_json: JsonOpt = False,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Long-document perplexity, segment by segment: each segment sees its window plus what memory
    retrieves. Prints the baseline (no memory, same window) and every --memory variant side by side
    (default: knn-joint, knn-lm and knn-joint-lm)."""
    from memlm import load_backbone
    from memlm.data import load_corpus
    from memlm.eval.perplexity import compare_perplexity

    if (file is None) == (corpus is None):
        raise typer.BadParameter("give a FILE or --corpus NAME (not both)")
    text = read_text(file) if file is not None else load_corpus(corpus)
    source = str(file) if file is not None else corpus
    names = memory_names(memory) or ["knn-joint", "knn-lm", "knn-joint-lm"]
    model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
    report = compare_perplexity(model, tokenizer, text, window, {name: [name] for name in names},
                                max_tokens=max_tokens, progress=not as_json, reference_context=reference_context)
    report["source"] = source
    report["memory_ppl"] = min(report["results"][name]["perplexity"] for name in names)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"perplexity of {source}: {report['tokens']:,} tokens, window {window}")
    for column in ("memory", "perplexity", "vs. baseline", "seconds"):
        table.add_column(column, justify="left" if column == "memory" else "right")
    for label, result in report["results"].items():
        table.add_row(label, f"{result['perplexity']:.2f}", f"{result['change_vs_baseline'] * 100:+.1f}%",
                      f"{result['seconds']:.0f}")
    console.print(table)


@app.command("recall")
@friendly_errors
def eval_recall(
    users: Annotated[int, typer.Option(min=1, help="synthetic users")] = 5,
    sessions: Annotated[int, typer.Option(min=1, max=20, help="sessions per user, one fact each")] = 20,
    filler_turns: Annotated[int, typer.Option(min=0, help="chit-chat exchanges per session")] = 4,
    systems: Annotated[str, typer.Option(help="contenders, comma-separated: none, full, rag or any mechanism / "
                                              "preset")] = "none,full,bank",
    window: Annotated[int, typer.Option(min=64, help="context window W of none, rag and the memories")] = 1024,
    seed: Annotated[int, typer.Option()] = 0,
    answer_tokens: Annotated[int, typer.Option(min=1, help="new tokens per reply")] = 32,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the full report (JSON)")] = None,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Multi-session recall: users state facts across sessions among real chit-chat, then ask
    about them; the bank vs. no memory vs. the whole history in context."""
    from memlm import load_backbone
    from memlm.data import multisession
    from memlm.eval.harness import check_contenders
    from memlm.eval.recall import evaluate_multisession
    from memlm.serialization import atomic_write_json

    names = check_contenders(comma_list(systems))
    model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
    histories = multisession.generate(users, sessions, filler_turns, seed)
    report = evaluate_multisession(model, tokenizer, histories, names, window=window, max_new_tokens=answer_tokens)
    report["command"] = "memlm " + " ".join(sys.argv[1:])
    table = Table(title=f"multi-session recall: {users} users x {sessions} sessions")
    for column in ("system", "recall", "clean", "exact", "questions", "seconds"):
        table.add_column(column)
    for name, result in report["systems"].items():
        table.add_row(name, f"{result['recall']:.1%}", f"{result['clean']:.1%}", f"{result['exact']:.1%}",
                      str(result["questions"]), f"{result['seconds']:.0f}")
    console.print(table)
    if output is not None:
        atomic_write_json(output, report)
        console.print(f"wrote {output}")


@app.command("chat")
@friendly_errors
def eval_chat(
    systems: Annotated[str, typer.Option(help="contenders, comma-separated (e.g. bank = untrained prompt "
                                              "fusion, chat = the trained chat preset)")] = "bank,chat",
    seeds: Annotated[str, typer.Option(help="user seeds, comma-separated")] = "0,1,2",
    users: Annotated[int, typer.Option(min=1, help="synthetic users per seed")] = 5,
    sessions: Annotated[int, typer.Option(min=1, max=20, help="sessions per user, one fact each")] = 20,
    questions: Annotated[int | None, typer.Option(min=1, help="told questions per user [default: all]")] = None,
    untold: Annotated[int, typer.Option(min=0, help="never-told questions per user")] = 4,
    window: Annotated[int, typer.Option(min=64, help="context window of the contenders")] = 1024,
    answer_tokens: Annotated[int, typer.Option(min=1, help="new tokens per reply (nothing is cut afterwards)")] = 64,
    continual: Annotated[int, typer.Option(min=0, help="also the continual task per seed: this many facts "
                                                        "learned one by one (0: skip; the suite uses 1000)")] = 0,
    continual_questions: Annotated[int, typer.Option(min=1, help="questions of the continual task")] = 100,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write every reply and score (JSON)")] = None,
    rescore: Annotated[list[Path] | None, typer.Option(
        help="instead of evaluating: merge these saved reports, recompute ROUGE-L and BERTScore from their "
             "replies, print the table (and write --output)")] = None,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Chat quality: multi-session recall, clean replies (to the user, <= 40 words, no sentence
    repeated), "I don't know" for never-told questions, ROUGE-L and BERTScore against reference
    replies; per contender and seed."""
    from tqdm.auto import tqdm

    from memlm import load_backbone
    from memlm.data import multisession
    from memlm.eval.chat import continual_result, evaluate_chat
    from memlm.eval.contenders import Contender
    from memlm.eval.harness import check_contenders
    from memlm.serialization import atomic_write_json

    if rescore:
        from memlm.eval.chat import rescore as rescore_report

        report = {"command": "memlm " + " ".join(sys.argv[1:]), "systems": {}}
        for path in rescore:
            saved = json.loads(path.read_text(encoding="utf-8"))
            for name, by_seed in saved["systems"].items():
                report["systems"].setdefault(name, {}).update(by_seed)
        _chat_table(rescore_report(report), output)
        return
    names = check_contenders(comma_list(systems))
    seed_list = [int(seed) for seed in comma_list(seeds)]
    model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
    report: dict[str, Any] = {"command": "memlm " + " ".join(sys.argv[1:]), "systems": {}}
    per_user = (questions or sessions) + untold
    bar = tqdm(total=len(names) * len(seed_list) * users * per_user, desc="chat eval", unit="question")
    for name in names:
        contender = Contender(name, model, tokenizer, window, answer_tokens)
        try:
            for seed in seed_list:
                histories = multisession.generate(users, sessions, 4, seed)
                result = evaluate_chat(contender, histories, questions, untold, bar)
                report["systems"].setdefault(name, {})[str(seed)] = result
                if output is not None:  # what is done survives a time limit
                    atomic_write_json(output, report)
                if continual:
                    result["continual"] = continual_result(contender, continual, continual_questions, seed)
                    result["summary"].update({f"continual_{k}": v for k, v in result["continual"]["summary"].items()})
                    if output is not None:
                        atomic_write_json(output, report)
        finally:
            contender.close()
    bar.close()
    _chat_table(report, output)


def _chat_table(report: dict[str, Any], output: Path | None) -> None:
    from memlm.serialization import atomic_write_json

    summaries = [result["summary"] for by_seed in report["systems"].values() for result in by_seed.values()]
    continual = any("continual_recall" in summary for summary in summaries)
    columns = ("recall", "clean_chat", "well_formed", "untold_says_unknown", "told_says_unknown", "rougeL",
               "bertscore_f1", "mean_words", *(("continual_recall", "continual_oldest") if continual else ()))
    table = Table(title="chat quality (multi-session users; never-told questions)")
    for column in ("system", "seed", *columns):
        table.add_column(column)
    for name, by_seed in report["systems"].items():
        for seed, result in by_seed.items():
            summary = result["summary"]
            table.add_row(name, seed, *(f"{summary[c]:.3f}" if isinstance(summary.get(c), float) else "-"
                                        for c in columns))
        if len(by_seed) > 1:
            mean = {c: [r["summary"][c] for r in by_seed.values() if isinstance(r["summary"].get(c), float)]
                    for c in columns}
            table.add_row(name, "mean", *(f"{sum(v) / len(v):.3f}" if v else "-" for v in mean.values()))
    console.print(table)
    if output is not None:
        atomic_write_json(output, report)
        console.print(f"wrote {output}")


@app.command("human")
@friendly_errors
def eval_human(
    out: Annotated[Path, typer.Option(help="report folder to add the human evaluation to (created if missing)")],
    votes: Annotated[Path | None, typer.Option(help="votes database [default: <home>/human_eval.sqlite]")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Summarise the blind pairwise votes cast on `memlm serve`'s compare page (win rates with 95%
    intervals) and add them to the evaluation report in OUT: results.json, results.md, human_eval.png."""
    from memlm.eval.human import VoteStore, summarise, votes_path, write_human_report

    path = votes or votes_path()
    if not path.is_file():
        raise typer.BadParameter(f"no votes at {path}: vote on the Compare tab of `memlm serve` first",
                                 param_hint="--votes")
    store = VoteStore(path)
    try:
        summary = summarise(store.votes())
        written = write_human_report(out, store)
    finally:
        store.close()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"human evaluation: {summary['votes']} votes")
    for column in ("contender", "votes", "wins", "ties", "losses", "win rate [95% CI]"):
        table.add_column(column)
    for row in summary["contenders"]:
        table.add_row(row["mechanism"], str(row["n"]), str(row["wins"]), str(row["ties"]), str(row["losses"]),
                      f"{row['win_rate']:.0%} [{row['ci_low']:.0%}-{row['ci_high']:.0%}]")
    console.print(table)
    console.print(f"wrote {', '.join(str(p) for p in written.values())}", highlight=False)
