"""Data set v2: learn to read any prose (``python -m research.data_builders --out data/v2 --version 2``).

Train/eval mix the v1 Factbook QA (~25 % of reasoning lines) with rule-based QA over six kinds of text (speeches,
Python docs, Austen, ACL papers; GNU manuals only in a test): entity wh-questions, some asked from a different
sentence than the one kept in the context, counterfactual copies (answer entity swapped everywhere), whole-document
questions over 1,000-3,000-word excerpts, multi-document haystacks and v1-style cloze/continuation; plus understanding
(reconstruction) windows (~15 % of lines). The question rules and example makers are the package's
(``e2llm_plugin.autodata``), which also builds these kinds from a user's own documents.

Held out of train and eval, by whole document family: every speech of the presidents of the v1 test speeches, the
novel ``HELD_OUT_NOVEL``, Python docs under ``HELD_OUT_PYDOC_DIRS``, aclsum's test papers, the GNU manuals (a kind never
trained on), the hand-written set's documents, and (as in v1) paragraphs naming a test country. The v1 test files are
rebuilt by the v1 code with the same seeds, byte-identical to a v1 build. ``test_descriptive.jsonl`` asks for answers
of one to three sentences quoted from held-out excerpts (`test_descriptive`). ``--only FILE ...`` builds some files
alone and leaves the others as they are.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from e2llm_plugin.autodata import questions, tasks

from . import Sizes as V1Sizes
from . import _rng, _summary, _write, prose, sources
from . import build as build_v1
from . import factbook as fb

HELD_OUT_NOVEL = "persuasion"
HELD_OUT_PYDOC_DIRS = ("tutorial/", "howto/")
V1_TEST_FILES = ("test_factbook_short.jsonl", "test_factbook_single.jsonl", "test_factbook_haystack.jsonl",
                 "test_heldout_field.jsonl", "test_unseen_kinds.jsonl")
V2_TEST_FILES = ("test_general_speeches.jsonl", "test_general_novels.jsonl", "test_general_docs.jsonl",
                 "test_general_papers.jsonl", "test_general_unseen_kind.jsonl", "test_general_counterfactual.jsonl",
                 "test_whole_document.jsonl")
DESCRIPTIVE_FILE = "test_descriptive.jsonl"
FILES = ("train.jsonl", "eval.jsonl") + V1_TEST_FILES + V2_TEST_FILES + ("test_handwritten.jsonl", DESCRIPTIVE_FILE)
TEST_FAMILY = {"test_general_speeches.jsonl": "sotu", "test_general_novels.jsonl": "austen",
               "test_general_docs.jsonl": "python_docs", "test_general_papers.jsonl": "acl",
               "test_general_unseen_kind.jsonl": "gnu_manuals"}
TECHNICAL = {"python_docs", "acl", "gnu_manuals"}
ALLOWED_LABELS = {"austen": {"PERSON", "DATE", "TIME", "GPE", "LOC", "CARDINAL", "MONEY", "FAC"}}


@dataclass(frozen=True)
class SizesV2:
    train_factbook: int = 4000
    train_entity: int = 7000
    train_whole: int = 1600
    train_haystack: int = 1000
    train_cloze: int = 600
    train_continuation: int = 600
    counterfactual_share: float = 0.2
    understanding_share: float = 0.15
    eval_factbook: int = 60
    eval_entity: int = 120
    eval_whole: int = 30
    eval_haystack: int = 20
    n_test: int = 70
    excerpt_words: int = 2500
    train_docs_per_source: int = 130
    test_docs_per_source: int = 40
    eval_docs_per_source: int = 15
    v1: V1Sizes = V1Sizes()
    n_descriptive: int = 75

    @classmethod
    def quick(cls) -> SizesV2:
        return cls(40, 60, 20, 10, 10, 10, 0.2, 0.15, 8, 10, 5, 4, 8, 1500, 4, 4, 2, V1Sizes.quick(), n_descriptive=10)


def _excerpt(source: str, doc: sources.Doc, rng: random.Random, max_words: int) -> tasks.Excerpt | None:
    """Prose paragraphs (headings kept) from a random start, up to ``max_words``; None when too short."""
    keep = [p for p in doc.paragraphs if (sources._is_prose(p) and len(p.split()) <= 400) or tasks.is_heading(p)]
    total = sum(len(p.split()) for p in keep)
    if total < 300:
        return None
    title = doc.paragraphs[0] if source in ("python_docs", "acl", "gnu_manuals") and tasks.is_heading(doc.paragraphs[0]) else None
    start, words = 0, 0
    if total > max_words:
        # start anywhere that still leaves max_words; the title stays first for docs that have one
        ends, acc = [], 0
        for p in reversed(keep):
            acc += len(p.split())
            ends.append(acc)
        starts = [i for i, left in enumerate(reversed(ends)) if left >= max_words]
        start = rng.choice(starts) if starts and not title else 0
    out = []
    for p in keep[start:]:
        if words + len(p.split()) > max_words:
            break
        out.append(p)
        words += len(p.split())
    if words < 300:
        return None
    return tasks.Excerpt(source, doc.doc_id, out, {p for p in out if tasks.is_heading(p)},
                         title if title and out[0] == title else None, generic=source in TECHNICAL,
                         allowed_labels=ALLOWED_LABELS.get(source))


def _parse(excerpts: list[tasks.Excerpt]) -> None:
    """spaCy over every paragraph, cached on disk by content (DocBin) so a rebuild skips the parser."""
    from spacy.tokens import DocBin

    nlp = questions.nlp()
    texts = [p for e in excerpts for p in e.paragraphs]
    key = hashlib.sha1(("\x00".join(texts) + questions.pipeline_name() + nlp.meta.get("version", "")).encode()).hexdigest()[:16]
    path = sources.corpora_dir() / "spacy_cache" / f"{key}.spacy"
    if path.exists():
        docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
    else:
        docs = list(nlp.pipe(texts, batch_size=64, n_process=1))
        path.parent.mkdir(parents=True, exist_ok=True)
        bin_ = DocBin(attrs=["ORTH", "TAG", "HEAD", "DEP", "ENT_IOB", "ENT_TYPE", "LEMMA", "POS", "SPACY"], docs=docs)
        bin_.to_disk(path)
    assert len(docs) == len(texts)
    i = 0
    for e in excerpts:
        e.parsed = docs[i:i + len(e.paragraphs)]
        i += len(e.paragraphs)


# --- example sets (the example makers are the package's: e2llm_plugin.autodata.tasks) ----------------------------

def _counterfactuals(examples: list[dict], pool, share: float, rng: random.Random) -> list[dict]:
    return tasks.counterfactuals(examples, pool, share, rng, TECHNICAL)


def reasoning_set(excerpts: list[tasks.Excerpt], rng: random.Random, n_entity: int, n_whole: int, n_hay: int,
                  cf_share: float, pool) -> list[dict]:
    by_source: dict[str, list[tasks.Excerpt]] = {}
    for ex in excerpts:
        by_source.setdefault(ex.source, []).append(ex)
    names = sorted(by_source)

    def pick(r):
        return r.choice(by_source[r.choice(names)])

    qa = tasks.repeat(lambda r: tasks.entity_qa(pick(r), r), n_entity, rng)
    cf = _counterfactuals(qa, pool, cf_share, rng)
    whole = tasks.repeat(lambda r: tasks.whole_doc(pick(r), r.choice(questions.WHOLE_KINDS), r), n_whole, rng, 12)
    hay = tasks.repeat(lambda r: tasks.haystack(pick(r), excerpts, r), n_hay, rng)
    return qa + cf + whole + hay


# --- the build ----------------------------------------------------------------------------------------------

def handwritten_builder():
    """The hand-written set's builder (`research.data_builders.handwritten`), or None where it is not shipped."""
    try:
        from . import handwritten
    except ImportError:
        return None
    return handwritten


def splits(seed: int) -> dict:
    """Documents per split and source; test holds whole families (see the module docstring)."""
    docs = {"sotu": sources.sotu_speeches(), "python_docs": sources.python_docs(), "austen": sources.austen_chapters()}
    from . import N_EVAL_DOCS, N_TEST_SPEECHES
    v1 = {name: prose.split_docs(ds, N_EVAL_DOCS[name], N_TEST_SPEECHES if name == "sotu" else 0,
                                 _rng(seed, f"split-{name}")) for name, ds in docs.items()}
    v1_test_speeches = sorted(d.doc_id for d in v1["sotu"][2])
    presidents = sorted({i.split("-")[1] for i in v1_test_speeches})
    handwritten = handwritten_builder()
    excluded = {(s, d) for s, ids in (getattr(handwritten, "DOC_IDS", {}) or {}).items() for d in ids}

    def test_of(source: str, doc_id: str) -> bool:
        return {"sotu": lambda: doc_id.split("-")[1] in presidents,
                "austen": lambda: doc_id.split("/")[0] == HELD_OUT_NOVEL,
                "python_docs": lambda: doc_id.startswith(HELD_OUT_PYDOC_DIRS)}[source]()

    out = {"train": {}, "eval": {}, "test": {}}
    for name, (train, evals, test) in v1.items():
        everything = train + evals + test
        out["test"][name] = [d for d in everything if test_of(name, d.doc_id)]
        out["eval"][name] = [d for d in evals if not test_of(name, d.doc_id) and (name, d.doc_id) not in excluded]
        out["train"][name] = [d for d in train if not test_of(name, d.doc_id) and (name, d.doc_id) not in excluded]
    papers = sources.acl_papers()
    for split, acl_split in (("train", "train"), ("eval", "val"), ("test", "test")):
        out[split]["acl"] = [sources.Doc(p.paper_id, p.title, prose.paper_text(p, 10 ** 6).split("\n"))
                             for p in papers if p.split == acl_split and
                             (split == "test" or ("acl", p.paper_id) not in excluded)]
    try:
        out["test"]["gnu_manuals"] = sources.gnu_manuals()
    except sources.SourceMissing:
        out["test"]["gnu_manuals"] = []
    out["held_out"] = {"v1_test_speeches": v1_test_speeches, "presidents": presidents, "novel": HELD_OUT_NOVEL,
                       "python_docs_dirs": list(HELD_OUT_PYDOC_DIRS), "acl": "aclsum test split",
                       "unseen_kind": "gnu_manuals", "handwritten_doc_ids": sorted(f"{s}:{d}" for s, d in excluded)}
    return out


def _excerpts(docs_by_source: dict, n_per_source: int, rng: random.Random, words: int, forbidden=None) -> list[tasks.Excerpt]:
    out = []
    for name, docs in sorted(docs_by_source.items()):
        made = []
        for doc in rng.sample(docs, len(docs)):
            ex = _excerpt(name, prose.without(doc, forbidden), rng, words)
            if ex:
                made.append(ex)
            if len(made) >= n_per_source:
                break
        out += made
    return out


def test_general(excerpts: list[tasks.Excerpt], n: int, rng: random.Random, max_words: int = 3000) -> list[dict]:
    """Entity QA over one held-out document hidden among other documents of its family (1,500-3,000 words)."""
    def make(r):
        ex = r.choice(excerpts)
        example = tasks.entity_qa(ex, r, 400, 900, other_sentence=0.5)
        if example is None:
            return None
        made = tasks.hide(example, example["context"], excerpts, r, (3, 8), max_words, passage_words=(200, 450))
        if not made or not 1500 <= sum(len(c.split()) for c in made["context"]) <= 4000 or made["prompt"] in seen:
            return None
        seen.add(made["prompt"])
        return made
    seen: set[str] = set()
    return tasks.repeat(make, n, rng, 40)


# --- descriptive questions: answers of one to three sentences (held-out documents only) -------------------------

# Topic entity types (a name), and first words that make a phrase vague ("Most programs", "other countries").
_NAMED = {"PERSON", "ORG", "NORP", "GPE", "LOC", "FAC", "EVENT", "WORK_OF_ART", "LAW", "PRODUCT", "LANGUAGE"}
_VAGUE_FIRST = set("""most many some other all several such few various any each every previous following recent certain
own same whole general new""".split())


def _specific(span) -> bool:
    """A topic a reader could look up (``span``: one of its mentions): a name (a named entity, or an identifier such as
    BaseException or str.zfill) or a phrase of two nouns or more ("the immigration service"); not a number, a
    possessive or an adjective before a noun ("the whole value", "Most programs", "zeros")."""
    words = [t for t in span if t.dep_ != "det"]
    if not words or words[0].lower_ in _VAGUE_FIRST or any(t.like_num for t in words) or span.text.endswith("'s"):
        return False
    if any(t.ent_type_ == "PERSON" for t in words) and not all(t.text[:1].isupper() or t.lower_ in ("of", "and", "de", "van",
                                                                                                "von") for t in words):
        return False  # a name run into other words by the tagger: "Anne haggard"
    doc = span.doc
    named = all(t.ent_type_ in _NAMED for t in words) and words[0].ent_iob_ == "B" and \
        any(t.pos_ in ("NOUN", "PROPN") for t in words) and \
        (span.end == len(doc) or doc[span.end].ent_iob_ != "I")  # the whole name: not "Justice" of "Department of Justice"
    identifier = len(words) == 1 and re.search(r"[a-z][A-Z]|_|\w\.\w", words[0].text) is not None
    return named or identifier or sum(t.pos_ in ("NOUN", "PROPN") for t in words) >= 2


def _nameable(name: str) -> bool:
    """A topic that reads well inside a question: no clause punctuation or broken quote ("Dear Smith,--I", "GNU 'diff")
    and one word of three letters or more ("N. H." is not)."""
    return not re.search(r"[,;:!?\"]|--", name) and re.sub(r"'s\b", "", name).count("'") % 2 == 0 and \
        any(len(w.strip(".'")) >= 3 for w in name.split())


def _clean(sentence: str) -> bool:
    """A sentence to score against: reads as text (`questions.describe`'s test), ends a sentence rather than handing
    over to a list or code block (':'), and is not extraction debris such as a PDF's spelled-out LaTeX (mostly
    one-letter words)."""
    words = sentence.split()
    return questions._reads_as_text(sentence) and re.search(r"[.!?][\"')\]]*$", sentence) is not None and \
        sum(len(w) == 1 for w in words) <= 0.2 * len(words)


def _mentions(sent, key: str) -> list:
    """The spans of ``sent`` that mention ``key`` (whole words, any case), as `questions.mentioning` finds them."""
    pattern = re.compile(questions.word_pattern(key).pattern, re.IGNORECASE)
    found = (sent.doc.char_span(sent.start_char + m.start(), sent.start_char + m.end()) for m in pattern.finditer(sent.text))
    return [span for span in found if span is not None]


def _about(sent, mention) -> bool:
    """Whether the mention is the subject of the sentence's main verb (the subject's head word is in it): the sentence
    says something of X, rather than naming X in passing ("the ASCII representation of binary data is ...")."""
    return any(child.dep_ in ("nsubj", "nsubjpass") and mention.start <= child.i < mention.end for child in sent.root.children)


def _cited(sentence: str, key: str) -> bool:
    """``key`` used as a citation ("Rousu and Shawe-Taylor (2005)", "Vilain et al., 1996") or as a run-in heading
    ("Test design The first setup ..."): a name to cite, not a topic to describe."""
    name = questions.word_pattern(key).pattern
    return re.search(name + r"\.?(\s+et al\.?|\s+and\s+[A-Z][\w-]+)?\s*,?\s*\(?\s*(1[89]|20)\d\d", sentence) is not None or \
        re.match(name + r"\s+[A-Z]", sentence) is not None


def describe_test(ex: tasks.Excerpt, rng: random.Random) -> dict | None:
    """"Describe X." over the whole excerpt, answered by every sentence of it that mentions X (one to three: the rule
    and limits of `questions.describe`), for a specific X (`_specific`) that one of those sentences is about (X in its
    subject), never cited, in clean sentences only."""
    sents = [s for doc in ex.parsed for s in doc.sents]
    texts = [" ".join(s.text.split()) for s in sents]
    context = "\n".join(ex.paragraphs)
    options = questions.topics(ex.parsed)
    for name, key in rng.sample(options, len(options)):
        hits = questions.mentioning(texts, key)
        if not 1 <= len(hits) <= questions.MAX_DESCRIPTION_SENTENCES or not _nameable(name):
            continue
        reference = [texts[i] for i in hits]
        mentions = [(sents[i], m) for i in hits for m in _mentions(sents[i], key)]
        if len(" ".join(reference).split()) > questions.MAX_DESCRIPTION_WORDS or not mentions or \
                not all(_clean(r) and r in context and not _cited(r, key) for r in reference) or \
                not all(_specific(m) for _, m in mentions) or not any(_about(s, m) for s, m in mentions):
            continue
        name = re.sub(r"^The ", "the ", name)  # "The National Government" began a sentence
        prompt = rng.choice(questions.DESCRIBE_TEMPLATES).format(x=name)
        return _descriptive_line(ex, prompt, reference, "describe", topic=name)
    return None


# A "heading" that is a cut line of text: it ends on a function word or holds a verb ("Parameter Estimations based on",
# "The actual encryption is done using the command").
_FRAGMENT = re.compile(r"\b(on|of|in|to|by|for|with|and|or|the|a|an|based|using)$|\b(is|are|was|were|has|have|be)\b")


def section_test(ex: tasks.Excerpt, rng: random.Random) -> dict | None:
    """"Summarize the section on Y." over the whole excerpt, answered by the section's lead sentences (the package's
    rule: `questions.section_summary`), kept only when they are clean text of 15 words or more."""
    made = questions.section_summary(ex.paragraphs, ex.headings, rng) if ex.headings else None
    if made is None:
        return None
    prompt, answer, heading = made
    reference = questions.split_sentences(answer)
    context = "\n".join(ex.paragraphs)
    if len(answer.split()) < 15 or not all(_clean(r) and r in context for r in reference) or _FRAGMENT.search(heading):
        return None
    return _descriptive_line(ex, prompt, reference, "summarize_section", heading=heading)


def _descriptive_line(ex: tasks.Excerpt, prompt: str, reference: list[str], task: str, **about) -> dict:
    context, answer = "\n".join(ex.paragraphs), " ".join(reference)
    return {"context": context, "prompt": prompt, "answer": answer, "reference_sentences": reference, "task": task,
            "source": ex.source, "doc_id": ex.doc_id, "extractive": answer in context, **about}


def _asks(line: dict) -> tuple[str, str]:
    """What a descriptive line asks about, whatever its wording: (document, topic or heading)."""
    return line["doc_id"], (line.get("topic") or line["heading"]).lower()


def test_descriptive(excerpts: list[tasks.Excerpt], n: int, rng: random.Random) -> list[dict]:
    """Descriptive questions over whole held-out excerpts (up to 3,000 words), ``n`` spread evenly over their sources
    and over as many documents as each source has: sources that have headings alternate "Describe X." with "Summarize
    the section on Y.", the others ask "Describe X." only. Answers are one to three sentences of the excerpt."""
    by_source: dict[str, list[tasks.Excerpt]] = {}
    for ex in excerpts:
        by_source.setdefault(ex.source, []).append(ex)
    names = sorted(by_source)
    out: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for k, name in enumerate(names):
        quota = n // len(names) + (k < n % len(names))
        pool = rng.sample(by_source[name], len(by_source[name]))
        made, turn = [], 0
        for _ in range(6):  # rounds over the source's excerpts: one question per excerpt and round
            for ex in pool:
                if len(made) >= quota:
                    break
                maker = section_test if turn % 2 and ex.headings else describe_test
                line = next((x for x in (maker(ex, rng) for _ in range(3)) if x and _asks(x) not in seen), None)
                if line:
                    seen.add(_asks(line))
                    made.append(line)
                    turn += 1
        out += made
    return out


def _dedupe(examples: list[dict], n: int) -> list[dict]:
    seen, out = set(), []
    for e in examples:
        if e["prompt"] not in seen:
            seen.add(e["prompt"])
            out.append(e)
    return out[:n]


def country_split(seed: int):
    """(train countries, eval countries, a pattern of the test countries' names): test countries are scrubbed from
    every training text, so no fact about them is learnt from a speech or a paper."""
    profiles = fb.load_profiles(sources.factbook_profiles())
    from . import MAX_TEST_COUNTRY_MENTIONS, N_EVAL_COUNTRIES, N_TEST_COUNTRIES, _country_mentions
    train_c, eval_c, test_c = fb.split_countries(profiles, N_TEST_COUNTRIES, N_EVAL_COUNTRIES, _rng(seed, "countries"),
                                                 _country_mentions(), MAX_TEST_COUNTRY_MENTIONS)
    return train_c, eval_c, fb.name_pattern(a for p in test_c for a in p.aliases)


def build(out_dir: str | Path, seed: int = 0, sizes: SizesV2 = SizesV2(), only: list[str] | None = None) -> dict:
    """Write every file of `FILES` into ``out_dir`` and return the manifest; ``only`` names the files to (re)build (as
    in the v1 `build`: the others are left untouched, each file is the same as in a full build)."""
    unknown = sorted(set(only or ()) - set(FILES))
    if unknown:
        raise ValueError(f"unknown data file(s) {unknown}; choose from {list(FILES)}")

    def wanted(name: str) -> bool:
        return only is None or name in only

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # v1 test files by the v1 code and seeds (byte-identical to a v1 build); the manifest is v2's, written below
    v1_manifest = build_v1(out, seed, sizes.v1, only=[f for f in V1_TEST_FILES if wanted(f)], write_manifest=False)
    train_c, eval_c, forbidden = country_split(seed)
    train_c = [q for q in (fb.scrub(p, forbidden) for p in train_c) if len(q.answers) >= 3]
    eval_c = [q for q in (fb.scrub(p, forbidden) for p in eval_c) if len(q.answers) >= 3]

    split = splits(seed)
    ex_rng = _rng(seed, "v2-excerpts")
    train_ex = _excerpts(split["train"], sizes.train_docs_per_source, ex_rng, sizes.excerpt_words, forbidden)
    eval_ex = _excerpts(split["eval"], sizes.eval_docs_per_source, ex_rng, sizes.excerpt_words, forbidden)
    test_ex = _excerpts(split["test"], sizes.test_docs_per_source, ex_rng, max(sizes.excerpt_words, 3000))
    _parse(train_ex + eval_ex + test_ex)

    def split_set(name, excerpts, countries, n_fb, n_entity, n_whole, n_hay, n_cloze, n_cont):
        rng = _rng(seed, f"v2-{name}")
        pool = tasks.entity_pool(excerpts)
        reasoning = fb.short_context_qa(countries, n_fb, rng, min_words=300, max_words=1200)
        reasoning += reasoning_set(excerpts, rng, n_entity, n_whole, n_hay, sizes.counterfactual_share, pool)
        docs = {}
        for ex in excerpts:
            docs.setdefault(ex.source, []).append(sources.Doc(ex.doc_id, ex.doc_id, ex.paragraphs))
        reasoning += prose.reasoning(docs, "cloze", n_cloze, rng, 300, 1200)
        reasoning += prose.reasoning(docs, "continuation", n_cont, rng, 300, 1200)
        n_under = round(sizes.understanding_share / (1 - sizes.understanding_share) * len(reasoning))
        under = []
        for i in range(4):
            under += prose.understanding(docs, random.Random(f"{seed}:{name}:under{i}"), 1000, 300)
        under += [{"text": fb.understanding_text(p, 1000), "source": "factbook", "doc_id": p.code} for p in countries]
        under = rng.sample(under, min(n_under, len(under)))
        examples = reasoning + under
        rng.shuffle(examples)
        return examples

    test_by_source: dict[str, list[tasks.Excerpt]] = {}
    for ex in test_ex:
        test_by_source.setdefault(ex.source, []).append(ex)
    n = sizes.n_test
    files = {
        "train.jsonl": lambda: split_set("train", train_ex, train_c, sizes.train_factbook, sizes.train_entity,
                                         sizes.train_whole, sizes.train_haystack, sizes.train_cloze,
                                         sizes.train_continuation),
        "eval.jsonl": lambda: split_set("eval", eval_ex, eval_c, sizes.eval_factbook, sizes.eval_entity, sizes.eval_whole,
                                        sizes.eval_haystack, sizes.eval_factbook // 2, sizes.eval_factbook // 2),
    }
    for name, source in TEST_FAMILY.items():
        files[name] = (lambda s, nm: lambda: test_general(test_by_source.get(s, []), n, _rng(seed, nm))
                       if test_by_source.get(s) else [])(source, name)

    def counterfactual_test():
        rng = _rng(seed, "v2-test-cf")
        pool = tasks.entity_pool(test_ex)
        qa = test_general([e for e in test_ex if e.source != "gnu_manuals"], 4 * n, rng)
        return _dedupe(_counterfactuals(qa, pool, 1.0, rng), n)

    def whole_test():
        rng = _rng(seed, "v2-test-whole")
        long = [e for e in test_ex if e.words >= 1500]
        turn = iter(range(10 ** 6))
        kinds = questions.WHOLE_KINDS
        made = tasks.repeat(lambda r: tasks.whole_doc(r.choice(long), kinds[next(turn) % len(kinds)], r),
                            n, rng, 15) if long else []
        return _dedupe(made, n)

    files["test_general_counterfactual.jsonl"] = counterfactual_test
    files["test_whole_document.jsonl"] = whole_test
    handwritten = handwritten_builder()
    if handwritten is not None:
        files["test_handwritten.jsonl"] = handwritten.build
    files[DESCRIPTIVE_FILE] = lambda: test_descriptive(test_ex, sizes.n_descriptive, _rng(seed, "v2-test-descriptive"))
    written = {name: make() for name, make in files.items() if wanted(name)}
    for name, examples in written.items():
        _write(out / name, examples)
    summaries = {name: v1_manifest["files"][name] for name in V1_TEST_FILES if name in v1_manifest["files"]}
    summaries.update({name: _summary(examples) for name, examples in written.items()})
    if only is not None and (out / "manifest.json").exists():  # keep the entries of the files left untouched
        previous = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["files"]
        order = V1_TEST_FILES + tuple(name for name in FILES if name not in V1_TEST_FILES)  # a full build's order
        summaries = {name: summaries.get(name, previous.get(name)) for name in order if name in summaries or name in previous}
    manifest = {
        "version": 2,
        "seed": seed,
        "sizes": asdict(sizes),
        "files": summaries,
        "split": {
            **v1_manifest["split"],
            "v2_held_out": split["held_out"],
            "v2_docs": {part: {s: sorted({e.doc_id for e in exs if e.source == s}) for s in sorted({e.source for e in exs})}
                        for part, exs in (("train", train_ex), ("eval", eval_ex), ("test", test_ex))},
            "v2_test_docs_available": {s: len(d) for s, d in split["test"].items()},
        },
        "versions": {**sources.versions(), "spacy_model": questions.pipeline_name()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
