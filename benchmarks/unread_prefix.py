"""A second hybrid question over a long document, its prefix cached: with the unread prefix positions left out of the
attention (the default) and with every position attended, masked (as before), in one run.

    python benchmarks/unread_prefix.py --tokens 100000

Past `max_soft_chunks` every chunk's soft tokens stay in the shared prefix and a question hides those it does not read:
at 100k tokens about 1,200 soft positions, of which it reads 256. Prints each way's time to first token (median of
`--repeats`, alternating) and both answers, which must agree. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics

from e2llm_plugin import E2LLM
from e2llm_plugin.bench import QUESTIONS, corpus, first_token, prefix
from e2llm_plugin.shared_prefix import SharedPrefixCache


def attend_everything(prefix_layers, prefix_visible):
    return prefix_layers, prefix_visible


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = E2LLM.from_pretrained(store=False)
    context = model.compress([prefix(model, corpus(None), args.tokens)], show_progress=False)
    question = QUESTIONS[1]
    model.answer(question, context=context, max_new_tokens=1)  # prefills the shared prefix once, and caches it
    ways = {"unread left out": SharedPrefixCache.leave_out_unread, "every position, masked": attend_everything}
    seconds = {name: [] for name in ways}
    answers = {}
    for _ in range(args.repeats):
        for name, leave_out in ways.items():
            SharedPrefixCache.leave_out_unread = staticmethod(leave_out)
            seconds[name].append(first_token(model, lambda: model.answer(question, context=context,
                                                                          max_new_tokens=1))[0])
            answers[name] = model.generate(question, context=context, max_new_tokens=24)
    SharedPrefixCache.leave_out_unread = staticmethod(ways["unread left out"])
    print(f"{context.num_source_tokens:,} tokens, {context.num_chunks:,} chunks, hybrid, second question:")
    for name in ways:
        print(f"  {name:>24}: {statistics.median(seconds[name]):.2f} s to first token   answer {answers[name]!r}")
    base, new = (statistics.median(seconds[name]) for name in reversed(list(ways)))
    print(f"  {base / new:.1f}x faster; answers {'identical' if len(set(answers.values())) == 1 else 'DIFFER'}")


if __name__ == "__main__":
    main()
