"""`ppl/<text>`: long-document perplexity in window-sized segments, on text not used for tuning."""

from __future__ import annotations

from typing import Any

from memlm.eval.tasks.base import EvalTask, PairResult, TaskRun


class PerplexityTask(EvalTask):
    family = "ppl"
    settings = ("ppl_",)
    default_task = "ppl/long-document"

    def run(self, task: str, contender: Any, run: TaskRun) -> PairResult:
        from memlm.data.corpora import CorpusNotFoundError, fetch_gutenberg, load_corpus
        from memlm.eval.perplexity import context_perplexity, segment_perplexity

        if contender.kind == "rag":
            return PairResult([], [{"skipped": "rag retrieves text for prompts; it has no perplexity of its own"}])
        corpus = run.suite.ppl_corpus
        try:
            try:
                text = load_corpus(corpus)
            except CorpusNotFoundError:
                fetch_gutenberg()
                text = load_corpus(corpus)
        except CorpusNotFoundError:
            corpus, text = run.suite.ppl_fallback, load_corpus(run.suite.ppl_fallback)
        input_ids = run.tokenizer(text, return_tensors="pt").input_ids[0, :run.suite.ppl_tokens]
        if contender.kind == "full":
            result = context_perplexity(contender.model.backbone, input_ids, run.window, contender.native_window,
                                        progress=False)
        else:
            result = segment_perplexity(contender.model, input_ids, run.window, contender.name, progress=False)
        return PairResult([{"task": f"ppl/{corpus}", "length": None, "metric": "perplexity",
                            "value": result.perplexity, "n": int(input_ids.shape[0]), "higher_is_better": False}],
                          [result.to_dict()])
