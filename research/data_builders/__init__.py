"""Build E2LLM training, evaluation and test sets from real text that installs offline.

``python -m research.data_builders --out DIR`` (from the repository root) writes JSONL files the training module reads:
reasoning lines ``{"context": str | [str], "prompt", "answer", "task", "source", "doc_id", ...}`` and
understanding lines ``{"text", "source", "doc_id"}``, plus ``manifest.json`` (counts, split, versions).

- ``train.jsonl`` / ``eval.jsonl``: understanding windows of SOTU speeches, Python docs, Austen chapters,
  ACL papers and Factbook profiles; Factbook QA (the main reasoning task) and cloze / continuation over
  prose, all with short (600-1,500-word) contexts so a CPU step stays cheap. Eval uses held-out documents.
- ``test_factbook_short.jsonl``: QA over short (500-1,000-word) contexts of test countries, built like the
  training QA, so that reading the whole context as text fits a 2k-token decoder window (full-context baseline).
- ``test_factbook_single.jsonl``: QA over one whole profile of a test country.
- ``test_factbook_haystack.jsonl``: the same over 20k-100k tokens of whole test-country profiles.
- ``test_heldout_field.jsonl``: QA about a field never asked in train/eval (``factbook.HELD_OUT_FIELD``).
- ``test_unseen_kinds.jsonl``: document and question kinds never trained on (see ``prose``).

Test countries, test speeches and aclsum's test papers never reach train or eval; train/eval text that
names a test country is dropped. Everything is deterministic given the seed.
"""
from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from . import factbook as fb
from . import prose, sources


@dataclass(frozen=True)
class Sizes:
    """How many examples of each kind to make; ``quick()`` is a seconds-long version for tests."""

    train_qa: int = 3500
    train_cloze: int = 1000
    train_continuation: int = 1000
    eval_qa: int = 120
    eval_cloze: int = 40
    eval_continuation: int = 40
    eval_understanding: int = 80
    max_train: int | None = None
    max_test: int = 150
    max_haystack: int = 50
    understanding_words: int = 3000

    @classmethod
    def quick(cls, max_train: int | None = None) -> Sizes:
        return cls(40, 10, 10, 10, 4, 4, 6, max_train if max_train is not None else 80, 8, 2, 800)


# Documents per split; test countries must be rare in the prose (see factbook.split_countries).
N_TEST_COUNTRIES, N_EVAL_COUNTRIES, MAX_TEST_COUNTRY_MENTIONS = 50, 15, 10
N_EVAL_DOCS = {"sotu": 15, "python_docs": 20, "austen": 15}
N_TEST_SPEECHES = 12


def _rng(seed: int, part: str) -> random.Random:
    """One independent stream per part, so changing one part's size leaves the others unchanged."""
    return random.Random(f"{seed}:{part}")


def _check(example: dict, where: str) -> None:
    """Guard the output contract the training module relies on."""
    if "text" in example:
        assert example["text"].strip(), where
        return
    context = example["context"]
    assert context and example["answer"].strip() and example["prompt"].strip(), where
    if example.get("extractive"):
        joined = context if isinstance(context, str) else "\n".join(context)
        assert example["answer"] in joined, f"{where}: answer not in context: {example['answer']!r}"


def _write(path: Path, examples: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i, example in enumerate(examples):
            _check(example, f"{path.name}:{i}")
            out.write(json.dumps(example, ensure_ascii=False) + "\n")


def _words(example: dict) -> int:
    context = example.get("text") or example["context"]
    return len((context if isinstance(context, str) else "\n".join(context)).split())


def _summary(examples: list[dict]) -> dict:
    return {
        "lines": len(examples),
        "by_task": dict(Counter(e.get("task", "understanding") for e in examples).most_common()),
        "by_source": dict(Counter(e["source"] for e in examples).most_common()),
        "mean_context_words": round(statistics.fmean(map(_words, examples))) if examples else 0,
    }


@lru_cache(maxsize=1)
def _country_mentions() -> dict[str, int]:
    """How often each country name occurs in all the prose corpora (cached: a few seconds of work)."""
    texts = [p for load in (sources.sotu_speeches, sources.python_docs, sources.austen_chapters)
             for doc in load() for p in doc.paragraphs]
    texts += [text for paper in sources.acl_papers() for _, text in paper.sections]
    return fb.count_mentions([a for p in fb.load_profiles(sources.factbook_profiles()) for a in p.aliases], texts)


# Short test contexts: the lower part of the training range, so whole contexts fit 2k decoder tokens (~1.8/word).
SHORT_TEST_WORDS = (500, 1000)
FILES = ("train.jsonl", "eval.jsonl", "test_factbook_short.jsonl", "test_factbook_single.jsonl",
         "test_factbook_haystack.jsonl", "test_heldout_field.jsonl", "test_unseen_kinds.jsonl")


def short_test_qa(test_countries: list, n: int, rng: random.Random) -> list[dict]:
    """Training-style QA (answer block + distractor blocks, test countries only) over short contexts."""
    low, high = SHORT_TEST_WORDS
    out = fb.short_context_qa(test_countries, n, rng, min_words=low, max_words=high)
    for example in out:
        example["approx_tokens"] = fb.approx_tokens(example["context"])
    return out


def build(out_dir: str | Path, seed: int = 0, sizes: Sizes = Sizes(), only: list[str] | None = None,
          write_manifest: bool = True) -> dict:
    """Write every file into ``out_dir`` and return the manifest.

    ``only`` names the files to (re)build; the others are neither computed nor touched, and their entries in an
    existing ``manifest.json`` are kept. Every file draws from its own seeded stream, so a file built alone is
    byte-identical to the same file of a full build. ``write_manifest=False``: the caller writes its own (v2).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(only or ()) - set(FILES))
    if unknown:
        raise ValueError(f"unknown data file(s) {unknown}; choose from {list(FILES)}")

    profiles = fb.load_profiles(sources.factbook_profiles())
    docs = {"sotu": sources.sotu_speeches(), "python_docs": sources.python_docs(), "austen": sources.austen_chapters()}
    papers = sources.acl_papers()

    train_c, eval_c, test_c = fb.split_countries(profiles, N_TEST_COUNTRIES, N_EVAL_COUNTRIES, _rng(seed, "countries"),
                                                 _country_mentions(), MAX_TEST_COUNTRY_MENTIONS)
    forbidden = fb.name_pattern(a for p in test_c for a in p.aliases)
    train_c = [q for q in (fb.scrub(p, forbidden) for p in train_c) if len(q.answers) >= 3]
    eval_c = [q for q in (fb.scrub(p, forbidden) for p in eval_c) if len(q.answers) >= 3]

    splits = {name: prose.split_docs(ds, N_EVAL_DOCS[name], N_TEST_SPEECHES if name == "sotu" else 0,
                                     _rng(seed, f"split-{name}")) for name, ds in docs.items()}
    pools = {split: {name: [prose.without(d, forbidden) for d in parts[i]] for name, parts in splits.items()}
             for i, split in enumerate(("train", "eval"))}
    for split, aclsum_splits in (("train", ("train",)), ("eval", ("val",))):
        pools[split]["acl"] = [prose.without(sources.Doc(p.paper_id, p.title, prose.paper_text(p, 10**6).split("\n")),
                                             forbidden) for p in papers if p.split in aclsum_splits]

    def split_set(split, n_qa, n_cloze, n_cont, countries, n_understanding=None):
        rng = _rng(seed, split)
        reasoning_pools = {k: v for k, v in pools[split].items() if k != "acl"}  # ACL stays unseen in reasoning
        understanding = prose.understanding(pools[split], rng, sizes.understanding_words) + [
            {"text": fb.understanding_text(p, sizes.understanding_words), "source": "factbook", "doc_id": p.code}
            for p in countries]
        if n_understanding is not None:
            understanding = rng.sample(understanding, min(n_understanding, len(understanding)))
        examples = (fb.short_context_qa(countries, n_qa, rng)
                    + prose.reasoning(reasoning_pools, "cloze", n_cloze, rng)
                    + prose.reasoning(reasoning_pools, "continuation", n_cont, rng)
                    + understanding)
        rng.shuffle(examples)
        return examples

    asked = [f.name for f in fb.FIELDS if f.name != fb.HELD_OUT_FIELD]
    makers = {
        "train.jsonl": lambda: split_set("train", sizes.train_qa, sizes.train_cloze, sizes.train_continuation,
                                         train_c)[: sizes.max_train],
        "eval.jsonl": lambda: split_set("eval", sizes.eval_qa, sizes.eval_cloze, sizes.eval_continuation, eval_c,
                                        sizes.eval_understanding),
        "test_factbook_short.jsonl": lambda: short_test_qa(test_c, sizes.max_test, _rng(seed, "short")),
        "test_factbook_single.jsonl": lambda: fb.single_profile_qa(test_c, asked, sizes.max_test, _rng(seed, "single")),
        "test_factbook_haystack.jsonl": lambda: fb.haystack_qa(test_c, asked, sizes.max_haystack, _rng(seed, "haystack")),
        "test_heldout_field.jsonl": lambda: fb.single_profile_qa(test_c, [fb.HELD_OUT_FIELD], sizes.max_test,
                                                                 _rng(seed, "heldout")),
        "test_unseen_kinds.jsonl": lambda: prose.unseen_kinds([p for p in papers if p.split == "test"],
                                                              splits["sotu"][2], sizes.max_test, _rng(seed, "unseen")),
    }
    assert tuple(makers) == FILES
    files = {name: make() for name, make in makers.items() if only is None or name in only}
    for name, examples in files.items():
        _write(out / name, examples)

    summaries = {name: _summary(examples) for name, examples in files.items()}
    if only is not None and (out / "manifest.json").exists():
        previous = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["files"]
        summaries = {name: summaries.get(name, previous.get(name)) for name in FILES
                     if name in summaries or name in previous}
    manifest = {
        "seed": seed,
        "sizes": asdict(sizes),
        "files": summaries,
        "split": {
            "test_countries": [p.name for p in test_c],
            "eval_countries": [p.name for p in eval_c],
            "train_countries": [p.name for p in train_c],
            "held_out_field": fb.HELD_OUT_FIELD,
            "trained_fields": asked,
            "eval_docs": {name: sorted(d.doc_id for d in parts[1]) for name, parts in splits.items()},
            "test_speeches": sorted(d.doc_id for d in splits["sotu"][2]),
            "acl": "aclsum train -> train, val -> eval, test -> test_unseen_kinds",
        },
        "versions": sources.versions(),
    }
    if write_manifest:
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
