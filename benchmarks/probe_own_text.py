"""A stranger's check of the long-text presets: facts written here, hidden in text nobody in the project
wrote or trained on, asked in their own words (CPU, about a minute per contender on 2 cores).

    python benchmarks/probe_own_text.py                       # none, babilong, importance-babilong-words
    python benchmarks/probe_own_text.py --text book.txt --memory none,babilong

The haystack defaults to Debian's GPL-3 and GFDL-1.3 licence texts (about 12,900 tokens); each fact is
placed in its own copy, at a different paragraph, and the reply counts as right when it holds the answer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import memlm
from memlm.eval.contenders import Contender

LICENCES = [Path("/usr/share/common-licenses/GPL-3"), Path("/usr/share/common-licenses/GFDL-1.3")]

# (fact, question, answer): people, places and phrasings that no generator in memlm.data draws.
PROBES = [
    ("Wanjiru Kamau parked her bicycle behind the old bakery.", "Where did Wanjiru Kamau park her bicycle?",
     "bakery"),
    ("The combination of the blue safe is 58214.", "What is the combination of the blue safe?", "58214"),
    ("Tomasz Wierzbicki flew to Reykjavik on Thursday.", "Where did Tomasz Wierzbicki fly to?", "Reykjavik"),
    ("Ilse Brandauer went to the greenhouse. Later Ilse Brandauer walked to the harbour.",
     "Where is Ilse Brandauer?", "harbour"),
    ("The secret word for the meeting is marmalade.", "What is the secret word for the meeting?", "marmalade"),
    ("Dr. Oyelaran keeps her spare keys in the green teapot.", "Where does Dr. Oyelaran keep her spare keys?",
     "teapot"),
]


def contexts_with_facts(text: str) -> list[str]:
    """One copy of the text per probe, its fact inserted as a paragraph of its own, each at another place."""
    paragraphs = text.split("\n\n")
    if len(paragraphs) < 8 * len(PROBES):
        raise SystemExit(f"the text has {len(paragraphs)} paragraphs; give one with at least {8 * len(PROBES)}")
    contexts = []
    for index, (fact, _, _) in enumerate(PROBES):
        where = len(paragraphs) // 5 + index * 7
        contexts.append("\n\n".join(paragraphs[:where] + [fact] + paragraphs[where:]))
    return contexts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, nargs="*", default=LICENCES, help="haystack file(s), joined")
    parser.add_argument("--memory", default="none,babilong,importance-babilong-words",
                        help="contenders, comma-separated (as for memlm eval)")
    args = parser.parse_args()
    missing = [str(path) for path in args.text if not path.is_file()]
    if missing:
        raise SystemExit(f"no such file: {', '.join(missing)} (give --text)")
    text = "\n\n".join(path.read_text(errors="replace") for path in args.text)
    model, tokenizer = memlm.load_backbone()
    print(f"haystack: {len(tokenizer(text).input_ids):,} tokens; {len(PROBES)} facts, one per copy")
    contexts = contexts_with_facts(text)
    questions = [question for _, question, _ in PROBES]
    for name in args.memory.split(","):
        contender = Contender(name, model, tokenizer)
        replies = contender.answer_batch(contexts, [[question] for question in questions], questions)
        contender.close()
        right = 0
        for (_, question, answer), [reply] in zip(PROBES, replies, strict=True):
            correct = answer.lower() in reply.lower()
            right += correct
            print(f"  {name:26} {'right' if correct else 'wrong':5}  {question} -> {reply.strip()[:70]!r}")
        print(f"{name}: {right} of {len(PROBES)}")


if __name__ == "__main__":
    main()
