"""Answer metrics (SQuAD v1.1 normalisation) and a peak-memory probe."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import re
import string
import threading
import time
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
_QUOTES = "\"'` \t\n"


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and the articles a/an/the removed, whitespace collapsed.
    An answer that is nothing but punctuation (":", "':'") keeps it, unquoted: otherwise it would equal every other
    such answer ("<<<<"), and an empty prediction would match it."""
    words = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", words).split()) or " ".join(text.strip(_QUOTES).split())


def answer_in(text: str, gold: str) -> float:
    """1.0 if the normalised gold answer occurs in the normalised text: did retrieval hand the reader the answer?"""
    return float(f" {normalize_answer(gold)} " in f" {normalize_answer(text)} ")


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """SQuAD token F1 between normalised prediction and gold (1.0 when both normalise to nothing)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_recall(prediction: str, gold: str) -> float:
    """Share of the normalised gold tokens (with multiplicity) found in the prediction: verbosity is not punished."""
    pred, ref = Counter(normalize_answer(prediction).split()), Counter(normalize_answer(gold).split())
    if not ref:
        return 1.0
    return sum((pred & ref).values()) / sum(ref.values())


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F1 over normalised words: the longest common subsequence against both lengths. For answers of a few
    sentences, where word order matters and a bag of words (F1) says too little."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    row = [0] * (len(ref) + 1)  # one row of the LCS table at a time
    for word in pred:
        diagonal = 0
        for j, other in enumerate(ref, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if word == other else max(row[j], row[j - 1])
    lcs = row[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, golds: str | list[str]) -> dict[str, float]:
    """EM, F1, recall and ROUGE-L against the best of the accepted answers (SQuAD takes the maximum over its
    references)."""
    golds = [golds] if isinstance(golds, str) else golds
    return {name: max(fn(prediction, gold) for gold in golds)
            for name, fn in (("em", exact_match), ("f1", f1_score), ("recall", answer_recall), ("rouge_l", rouge_l))}


def loops(prediction: str, source: str = "") -> bool:
    """Whether an answer is stuck in a loop: a word 3-gram said three times, or a 5-gram twice (a short answer that is
    right almost never repeats itself like that), more often than the `source` it reads says it (an answer that quotes
    two sentences of the document beginning alike does not loop)."""
    words = normalize_answer(prediction).split()
    grams = {n: Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in (3, 5)}
    repeated = [(gram, count) for n, least in ((3, 3), (5, 2)) for gram, count in grams[n].items() if count >= least]
    if not repeated or not source:
        return bool(repeated)
    said = normalize_answer(source).split()
    return any(count > sum(tuple(said[i : i + len(gram)]) == gram for i in range(len(said) - len(gram) + 1))
               for gram, count in repeated)


# ---- memory ---------------------------------------------------------------------------------------------------------
def _rss_reader():
    try:
        import psutil

        process = psutil.Process()
        return lambda: process.memory_info().rss
    except ImportError:  # Linux without psutil
        def read() -> int:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
            return 0

        return read


_LIBC = None
if os.name == "posix":
    try:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = _LIBC.malloc_trim  # glibc only: raises AttributeError elsewhere
    except (OSError, AttributeError):
        _LIBC = None


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``), so that memory an earlier call freed but the
    allocator kept cannot be reused unseen: without this, later calls would look free. (A full ``gc.collect`` costs
    ~0.4 s with transformers loaded; tensors are freed by reference counting, so the youngest generation suffices.)"""
    gc.collect(0)
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class PeakMemory:
    """Peak memory a block adds, in MB: CUDA's allocator peak on a GPU, else process RSS sampled every
    ``interval`` seconds by a background thread (torch releases the GIL in its kernels), minus the RSS at entry.

    Sampling can miss a peak shorter than the interval, and RSS counts every allocation of the process, so
    treat the figure as the working memory of the call to within a few MB.
    """

    def __init__(self, device=None, interval: float = 0.005):
        self.cuda = device is not None and str(device).startswith("cuda")
        self.interval = interval
        self.peak_mb = 0.0
        self._read = _rss_reader()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        release_free_memory()
        self._base = self._peak = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._read())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._read())
        self.peak_mb = max(0.0, (peak - self._base) / 2**20)
