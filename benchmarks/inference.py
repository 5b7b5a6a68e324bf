"""Load, compress and answer times of the shipped checkpoint, against reading the same text straight into the decoder.

    python benchmarks/inference.py examples/factbook_finland.txt -q "What is the national holiday of Finland?"

The baseline prefills the document's first `--baseline-tokens` decoder tokens (the whole document when it fits)
into the same decoder and times the first token; E2LLM's time to first token includes compression.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from e2llm_plugin import E2LLM
from e2llm_plugin.decoder import Prompt


def first_piece(pieces) -> tuple[str, float]:
    start = time.perf_counter()
    text = next(iter(pieces), "")
    return text, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("-q", "--question", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--baseline-tokens", type=int, default=8000)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    text = open(args.file, encoding="utf-8").read()

    start = time.perf_counter()
    model = E2LLM.from_pretrained(args.model)
    load = time.perf_counter() - start
    start = time.perf_counter()
    ctx = model.compress([text], show_progress=False)
    compress = time.perf_counter() - start
    print(f"load {load:.1f}s | compress {ctx.num_source_tokens} tokens -> {ctx.num_chunks} chunks in {compress:.2f}s "
          f"({ctx.num_chunks / compress:.0f} chunks/s), ratio {ctx.compression_ratio:.0f}x")

    results = {}
    for mode in ("soft", "hybrid"):
        start = time.perf_counter()
        answer = model.answer(args.question, context=ctx, mode=mode, max_new_tokens=args.max_new_tokens)
        pieces = iter(answer)
        _, _ = next(pieces, ""), None
        ttft = time.perf_counter() - start
        "".join(pieces)  # the rest of the answer
        total = time.perf_counter() - start
        results[mode] = ttft
        print(f"{mode:6s}: {answer.prompt_tokens} decoder tokens read, first token {ttft:.2f}s (+compress {compress:.2f}s), "
              f"answer {total:.2f}s: {answer.text!r}")

    ids = model.decoder.tokenizer(text, add_special_tokens=False)["input_ids"][: args.baseline_tokens]
    embeds = model.decoder.model.get_input_embeddings()(torch.tensor(ids)).unsqueeze(0)
    with model.decoder.model.disable_adapter():
        start = time.perf_counter()
        next(iter(model.decoder.stream_text(Prompt(embeds), 1)), "")
        prefill = time.perf_counter() - start
    e2llm = compress + results["soft"]
    print(f"plain decoder: prefill of {len(ids)} tokens to first token {prefill:.1f}s | E2LLM soft (compress + first token) "
          f"{e2llm:.1f}s | speed-up {prefill / e2llm:.1f}x")


if __name__ == "__main__":
    main()
