"""What bounds a second question's time to first token once its context's prefix is cached, in one run.

    python benchmarks/cached_question.py --tokens 4096

Prints (1) one decoder-sized matrix product (576 -> 1536 features, fp32) for 1 row and for 14 (a question's own
tokens): small products run far below a prefill's rate; (2) over `--tokens` tokens of the State of the Union corpus,
the second question's time (median of 7) and the full prefill's, with the decoder's merged copy in fp32 and in bf16.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from e2llm_plugin import E2LLM
from e2llm_plugin.bench import QUESTIONS, corpus, prefix


def gemm_us(rows: int, repeats: int = 300) -> float:
    x, w = torch.randn(rows, 576), torch.randn(1536, 576)
    for _ in range(20):
        torch.nn.functional.linear(x, w)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, w)
    return (time.perf_counter() - start) / repeats * 1e6


class Bf16(torch.nn.Module):
    """The decoder copy in bf16, fed the fp32 prompt embeddings E2LLM builds."""

    def __init__(self, model):
        super().__init__()
        self.model = copy.deepcopy(model).to(torch.bfloat16)

    def forward(self, **kwargs):
        if kwargs.get("inputs_embeds") is not None:
            kwargs["inputs_embeds"] = kwargs["inputs_embeds"].to(torch.bfloat16)
        return self.model(**kwargs)


def first_token_s(start) -> float:
    begin = time.perf_counter()
    next(iter(start()), None)
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    print(f"576 -> 1536 fp32 product: {gemm_us(1):.0f} us for 1 row, {gemm_us(14):.0f} us for 14 rows")
    model = E2LLM.from_pretrained(store=False)
    text = prefix(model, corpus(None), args.tokens)
    context = model.compress([text])
    q1, q2 = QUESTIONS
    copies = model.decoder.inference_copy
    fp32 = copies.get()
    for name, reader in (("fp32", fp32), ("bf16", Bf16(fp32))):
        copies.get = lambda reader=reader: reader  # the decoder generates with this copy
        context.prefix_cache = type(context.prefix_cache)()  # a prefix cached by the other copy must not be reused
        first_token_s(lambda: model.answer(q1, context=context, mode="soft", max_new_tokens=1))  # caches the prefix
        cached = statistics.median(first_token_s(lambda: model.answer(q2, context=context, mode="soft", max_new_tokens=1))
                                   for _ in range(7))
        full = first_token_s(lambda: model.answer_text(q1, text, model.context_window - 200, max_new_tokens=1))
        print(f"{name}: second question {cached:.3f} s, full prefill {full:.2f} s, ratio {full / cached:.0f}x")


if __name__ == "__main__":
    main()
