"""Lexical ranking of a context's chunks (BM25) and its fusion with the dense ranking (reciprocal rank fusion).

A dense sentence embedding misses a question that names the rare words of its answer's line ("national holiday"
among fifty "Finland - Government - ..." lines); word overlap finds exactly those. `E2LLM.rank_chunks` fuses both.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

# Words that name no fact: a question's wording ("what is the ...") must not pull chunks that merely share it.
STOPWORDS = frozenset(
    "a an and are as at be been by can could did do does for from had has have how i in is it its of on or that the "
    "their there these this those to was were what when where which who whom whose why will with would you".split()
)
_WORD = re.compile(r"\w+")
#: BM25's usual constants (term-frequency saturation, length normalisation) and RRF's (Cormack et al., 2009).
K1, B, RRF_K = 1.2, 0.75, 60


def words(text: str) -> list[str]:
    """The lowercased words of `text` that carry content, the same for chunks and questions."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


class Bm25:
    """Okapi BM25 over a fixed list of texts, built once (an inverted index): scoring a question touches only the
    chunks that share a word with it."""

    def __init__(self, texts: Sequence[str]):
        counts = [Counter(words(text)) for text in texts]
        self.size = len(counts)
        lengths = [sum(c.values()) for c in counts]
        mean = sum(lengths) / self.size if self.size and sum(lengths) else 1.0
        self.postings: dict[str, list[tuple[int, float]]] = defaultdict(list)  # word -> (chunk, saturated tf)
        for index, (count, length) in enumerate(zip(counts, lengths, strict=True)):
            norm = K1 * (1 - B + B * length / mean)
            for word, tf in count.items():
                self.postings[word].append((index, tf * (K1 + 1) / (tf + norm)))

    def scores(self, question: str) -> list[float]:
        """Each text's BM25 score for `question`'s words (each counted once; 0 for a text that shares none)."""
        scores = [0.0] * self.size
        for word in set(words(question)):
            postings = self.postings.get(word, ())
            idf = math.log(1 + (self.size - len(postings) + 0.5) / (len(postings) + 0.5))  # Lucene's: never negative
            for index, weight in postings:
                scores[index] += idf * weight
        return scores


def ranks(scores: Sequence[float]) -> list[int]:
    """Each item's rank (1 = best) by descending score; equal scores share the best rank among them, so a ranking
    that cannot tell items apart (BM25's zeros) favours none of them."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    out = [0] * len(scores)
    for position, index in enumerate(order):
        tied = position and scores[index] == scores[order[position - 1]]
        out[index] = out[order[position - 1]] if tied else position + 1
    return out


def fuse(*rankings: Sequence[float]) -> list[tuple[int, float]]:
    """(item index, fused score) for every item, best first, by reciprocal rank fusion of the score lists (one score
    per item in each): sum over lists of 1 / (60 + rank), scaled so that 1.0 is ranked first by every list. Ties go
    to the first list's higher score, then to the earlier item."""
    fused = [0.0] * len(rankings[0])
    for scores in rankings:
        for index, rank in enumerate(ranks(scores)):
            fused[index] += (RRF_K + 1) / (RRF_K + rank) / len(rankings)
    first = rankings[0]
    return [(i, fused[i]) for i in sorted(range(len(fused)), key=lambda i: (-fused[i], -first[i], i))]
