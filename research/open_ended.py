"""Open-ended questions, the kind on which a small decoder's greedy answers loop, derived from a QA test file.

    python -m research.open_ended data/v2/test_general_speeches.jsonl --out data/v2/test_open_ended.jsonl

Each line asks "What does the text say about {answer}?" over the same context, with the original answer as the gold
(so recall says whether the reply talks about it). Used to choose the decoding defaults: looping answers are counted by
`python -m e2llm_plugin.evaluate` on them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def open_ended(lines: list[dict]) -> list[dict]:
    seen, out = set(), []
    for row in lines:
        topic = row.get("answer", "").strip()
        if not row.get("prompt") or len(topic.split()) > 6 or topic.lower() in seen or topic.isdigit():
            continue
        seen.add(topic.lower())
        out.append({"context": row["context"], "prompt": f"What does the text say about {topic}?", "answer": topic,
                    "task": "open_ended", "source": row.get("source", ""), "doc_id": row.get("doc_id", "")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", help="QA test files")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = [json.loads(line) for path in args.data for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    made = open_ended(rows)
    Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in made), encoding="utf-8")
    print(f"{len(made)} open-ended questions -> {args.out}")


if __name__ == "__main__":
    main()
