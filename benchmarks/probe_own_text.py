"""A stranger's check of the long-text presets: facts written here, hidden in text nobody in the project
wrote or trained on, asked in their own words (CPU: about 10 minutes per contender on 2 cores).

    python benchmarks/probe_own_text.py                       # none, babilong, importance-babilong-words
    python benchmarks/probe_own_text.py --text book.txt --memory none,babilong --out probe.json
    python benchmarks/probe_own_text.py --text /usr/share/common-licenses/{GPL-2,LGPL-2.1,MPL-2.0,Apache-2.0}

The haystack defaults to Debian's GPL-3 and GFDL-1.3 licence texts (about 12,900 tokens); each fact is
placed in its own copy, at a different paragraph, and the reply counts as right when it holds the answer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import memlm
from memlm.eval.contenders import Contender

LICENCES = [Path("/usr/share/common-licenses/GPL-3"), Path("/usr/share/common-licenses/GFDL-1.3")]

# (fact, question, answer): people, places and phrasings that no generator in memlm.data draws; questions
# in other words than their facts where that stays unambiguous. The first six are the 2026-12-07 set.
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
    ("Nguyen Thi Lan hid the spare key under the flowerpot by the gate.",
     "Where did Nguyen Thi Lan hide the spare key?", "flowerpot"),
    ("The night train to Ljubljana leaves from platform 17.", "Which platform does the train to Ljubljana leave from?",
     "17"),
    ("Aroha Ngata's favourite instrument is the bassoon.", "Which instrument does Aroha Ngata like best?", "bassoon"),
    ("Chidi Okonkwo moved from Enugu to Rotterdam last spring.", "Which city did Chidi Okonkwo move to?",
     "Rotterdam"),
    ("The meeting with the architects was moved to Friday.", "On which day is the meeting with the architects?",
     "Friday"),
    ("Kalani Akana buried the time capsule beneath the mango tree.",
     "Where did Kalani Akana bury the time capsule?", "mango"),
    ("Soren Lindqvist named his sailing boat the Silver Heron.", "What is the name of Soren Lindqvist's boat?",
     "Heron"),
    ("Farida Haddad put the passports in the top drawer of the desk.", "Where did Farida Haddad put the passports?",
     "drawer"),
    ("Paulo Mendes was born in Coimbra, a town on the Mondego river.", "In which town was Paulo Mendes born?",
     "Coimbra"),
    ("Yuki Tanabe travelled to Valparaiso to photograph the murals.", "Where did Yuki Tanabe travel to?",
     "Valparaiso"),
    ("Rangi Parata went to the library first, and afterwards he went to the dentist.", "Where is Rangi Parata now?",
     "dentist"),
    ("The old treasure map was drawn by a sailor called Ezekiel Marsh.", "Who drew the old treasure map?", "Ezekiel"),
    ("Ines Carvalho drives a yellow Fiat.", "What colour is Ines Carvalho's car?", "yellow"),
    ("The cheapest flight to Nairobi costs 412 euros.", "How much does the cheapest flight to Nairobi cost?", "412"),
    ("Bolat Nurlanov hung his winter coat in the hallway closet.", "Where did Bolat Nurlanov hang his coat?",
     "closet"),
    ("Thandiwe Mokoena planted tomatoes along the south fence.", "What did Thandiwe Mokoena plant along the fence?",
     "tomato"),
    ("Eero Virtanen left the parcel with the pharmacist on Maple Street.",
     "Who did Eero Virtanen leave the parcel with?", "pharmacist"),
    ("The emergency generator stands in the shed behind the barn.", "Where is the emergency generator?", "shed"),
]


def contexts_with_facts(text: str) -> list[str]:
    """One copy of the text per probe, its fact inserted as a paragraph of its own, the places spread evenly."""
    paragraphs = text.split("\n\n")
    if len(paragraphs) < 4 * len(PROBES):
        raise SystemExit(f"the text has {len(paragraphs)} paragraphs; give one with at least {4 * len(PROBES)}")
    contexts = []
    for index, (fact, _, _) in enumerate(PROBES):
        where = (index + 1) * len(paragraphs) // (len(PROBES) + 1)  # spread over the whole text
        contexts.append("\n\n".join(paragraphs[:where] + [fact] + paragraphs[where:]))
    return contexts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, nargs="*", default=LICENCES, help="haystack file(s), joined")
    parser.add_argument("--memory", default="none,babilong,importance-babilong-words",
                        help="contenders, comma-separated (as for memlm eval)")
    parser.add_argument("--out", type=Path, help="write every reply and the scores here (JSON)")
    args = parser.parse_args()
    missing = [str(path) for path in args.text if not path.is_file()]
    if missing:
        raise SystemExit(f"no such file: {', '.join(missing)} (give --text)")
    text = "\n\n".join(path.read_text(errors="replace") for path in args.text)
    model, tokenizer = memlm.load_backbone()
    print(f"haystack: {len(tokenizer(text).input_ids):,} tokens; {len(PROBES)} facts, one per copy")
    contexts = contexts_with_facts(text)
    questions = [question for _, question, _ in PROBES]
    report: dict = {"haystack": [str(path) for path in args.text], "tokens": len(tokenizer(text).input_ids),
                    "contenders": {}}
    for name in args.memory.split(","):
        contender = Contender(name, model, tokenizer)
        replies = contender.answer_batch(contexts, [[question] for question in questions], questions)
        # what each row's memory kept, as text (memories that can show it): a miss with the answer kept
        # was misread, one without it was forgotten
        held = getattr(contender, "memory_texts", None) or [None] * len(PROBES)
        contender.close()
        right, kept, rows = 0, 0, []
        for (_, question, answer), [reply], text in zip(PROBES, replies, held, strict=True):
            correct = answer.lower() in reply.lower()
            in_memory = None if text is None else answer.lower() in text.lower()
            right, kept = right + correct, kept + bool(in_memory)
            rows.append({"question": question, "answer": answer, "reply": reply.strip(), "right": correct,
                         "answer_in_memory": in_memory})
            where = {None: "", True: "kept", False: "not kept"}[in_memory]
            print(f"  {name:26} {'right' if correct else 'wrong':5} {where:8}  {question} -> {reply.strip()[:60]!r}")
        memory = "" if held[0] is None else f" (answer in memory in {kept})"
        print(f"{name}: {right} of {len(PROBES)}{memory}")
        report["contenders"][name] = {"right": right, "of": len(PROBES), "answer_in_memory": kept if memory else None,
                                      "replies": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
