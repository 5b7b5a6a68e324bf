"""CIA World Factbook question answering: exact short answers inside long, real, structured documents.

A profile (``{Category: {Field: {text} | {Subfield: {text}}}}``) is flattened to one line per value:
``Austria - Government - National holiday: National Day, 26 October (1955); note - ...``.
Every line starts with the country's name so that a ~100-token chunk, compressed on its own, still says
whose fact it holds; without it a question about one country in a haystack of profiles could not be
answered from chunk embeddings at all.

Answers are the first clause of a field (notes, footnotes and later time-series values cut off),
<= 15 words, and always a verbatim substring of the context. Fields were picked because a 135M model
cannot know them by heart (holidays, leaders, anthems, rates...) rather than capitals; fields whose
answer is mostly the same everywhere (Suffrage: 73% "18 years of age; universal", Fiscal year: 69%
"calendar year") are left out because a model could score on them without reading.

Splits are by country. Test countries never appear in train or eval: not as question targets, not as
distractor profiles, and every train/eval line that names one of them is dropped (see ``name_pattern``).
One field (``HELD_OUT_FIELD``) is never asked about in train or eval, to test an unseen question: its
answers are short, nearly all distinct (178 of 186 dates) and not something a small model knows.
"""
from __future__ import annotations

import random
import re
from typing import NamedTuple

HELD_OUT_FIELD = "Independence"
MAX_ANSWER_WORDS = 15
CHARS_PER_TOKEN = 3.5  # SmolLM2 tokenizer on flattened profiles (measured); used for haystack sizes


class Field(NamedTuple):
    """A question-worthy value: where it lives in a profile and several ways to ask for it."""

    name: str
    path: tuple[str, ...]
    templates: tuple[str, ...]


FIELDS = (
    Field("Government type", ("Government", "Government type"), (
        "What type of government does {c} have?", "What is the government type of {c}?",
        "How is the government of {c} classified?", "{c} has what form of government?")),
    Field("National holiday", ("Government", "National holiday"), (
        "What is the national holiday of {c}?", "Which day does {c} celebrate as its national holiday?",
        "Name the national holiday of {c} and its date.", "When is the national holiday of {c}?")),
    Field("Independence", ("Government", "Independence"), (
        "When did {c} become independent?", "What is the date of independence of {c}?",
        "When did {c} gain its independence?")),
    Field("Legal system", ("Government", "Legal system"), (
        "What legal system does {c} have?", "Describe the legal system of {c}.",
        "What kind of legal system is used in {c}?")),
    Field("Chief of state", ("Government", "Executive branch", "chief of state"), (
        "Who is the chief of state of {c}?", "Who serves as head of state of {c}?",
        "Name the chief of state of {c}.")),
    Field("Head of government", ("Government", "Executive branch", "head of government"), (
        "Who is the head of government of {c}?", "Who leads the government of {c}?",
        "Name the head of government of {c}.")),
    Field("National anthem", ("Government", "National anthem", "name"), (
        "What is the name of the national anthem of {c}?", "What is {cs} national anthem called?",
        "Which song is the national anthem of {c}?")),
    Field("National symbols", ("Government", "National symbol(s)"), (
        "What are the national symbols of {c}?", "Which national symbol does {c} have?",
        "What is the national symbol of {c}?")),
    Field("Administrative divisions", ("Government", "Administrative divisions"), (
        "How is {c} divided administratively?", "What are the administrative divisions of {c}?",
        "How many first-order administrative divisions does {c} have?")),
    Field("Internet country code", ("Communications", "Internet country code"), (
        "What is the internet country code of {c}?", "Which top-level internet domain does {c} use?",
        "What is {cs} internet country code?")),
    Field("Highest point", ("Geography", "Elevation extremes", "highest point"), (
        "What is the highest point in {c}?", "Which is the highest point of {c}, and how high is it?",
        "Name the highest elevation in {c}.")),
    Field("Lowest point", ("Geography", "Elevation extremes", "lowest point"), (
        "What is the lowest point in {c}?", "Which is the lowest point of {c}?",
        "Name the lowest elevation in {c}.")),
    Field("Climate", ("Geography", "Climate"), (
        "What is the climate of {c} like?", "Describe the climate of {c}.", "What kind of climate does {c} have?")),
    Field("Total area", ("Geography", "Area", "total"), (
        "What is the total area of {c}?", "How large is {c} in total area?", "How big is {c}?")),
    Field("Coastline", ("Geography", "Coastline"), (
        "How long is the coastline of {c}?", "What is the length of {cs} coastline?",
        "How many kilometers of coastline does {c} have?")),
    Field("Median age", ("People and Society", "Median age", "total"), (
        "What is the median age in {c}?", "What is the overall median age of the population of {c}?",
        "How old is the median resident of {c}?")),
    Field("Population growth rate", ("People and Society", "Population growth rate"), (
        "What is the population growth rate of {c}?", "How fast is the population of {c} growing?",
        "At what rate is {cs} population growing?")),
    Field("Life expectancy", ("People and Society", "Life expectancy at birth", "total population"), (
        "What is the life expectancy at birth in {c}?", "How long do people in {c} live on average?",
        "What is the average life expectancy in {c}?")),
    Field("Unemployment rate", ("Economy", "Unemployment rate"), (
        "What is the unemployment rate in {c}?", "How high is unemployment in {c}?",
        "What share of the labor force of {c} is unemployed?")),
    Field("Inflation rate", ("Economy", "Inflation rate (consumer prices)"), (
        "What is the inflation rate in {c}?", "How fast are consumer prices rising in {c}?",
        "What is the rate of consumer price inflation in {c}?")),
    Field("GDP growth rate", ("Economy", "GDP - real growth rate"), (
        "What is the real GDP growth rate of {c}?", "How fast is the economy of {c} growing?",
        "By how much did the GDP of {c} grow?")),
    Field("Export partners", ("Economy", "Exports - partners"), (
        "Who are the main export partners of {c}?", "To which countries does {c} mostly export?",
        "Which countries buy most of {cs} exports?")),
    Field("Airports", ("Transportation", "Airports"), (
        "How many airports does {c} have?", "What is the number of airports in {c}?",
        "How many airports are there in {c}?")),
    Field("Military branches", ("Military", "Military branches"), (
        "What are the military branches of {c}?", "Which branches make up the armed forces of {c}?",
        "How are the armed forces of {c} organized?")),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}


class Block(NamedTuple):
    """One top-level field of a profile, flattened: the unit that contexts are assembled from."""

    category: str
    field: str
    lines: tuple[str, ...]

    @property
    def words(self) -> int:
        return sum(len(line.split()) for line in self.lines)


class Profile(NamedTuple):
    """A flattened profile with the answers of the question fields it has."""

    code: str
    name: str
    aliases: tuple[str, ...]  # every name form used to keep this country out of train/eval text
    blocks: tuple[Block, ...]
    answers: dict[str, tuple[str, Block]]  # field name -> (answer, the block holding it)

    @property
    def header(self) -> str:
        return f"CIA World Factbook profile of {self.name}"

    @property
    def text(self) -> str:
        """The whole profile, as a reader (or the haystack tests) sees it."""
        return "\n".join([self.header] + [line for block in self.blocks for line in block.lines])


def clean(text: str) -> str:
    """Factbook values use `` ++ `` between time-series values and sometimes carry markup."""
    text = re.sub(r"<[^>]+>", " ", text).replace("++", ";")
    return " ".join(text.split()).replace(" ;", ";").strip("; ")


def _leaves(node: dict, path: tuple[str, ...]):
    for key, value in node.items():
        if key == "text":
            if isinstance(value, str) and clean(value):
                yield path, clean(value)
        elif isinstance(value, dict):
            yield from _leaves(value, path + (key,))


def _names(profile: dict) -> tuple[str, tuple[str, ...]] | None:
    """Display name (short form unless it is missing, an abbreviation or has a qualifier) and aliases."""
    forms = profile.get("Government", {}).get("Country name", {})
    short = clean(forms.get("conventional short form", {}).get("text") or "")
    long = clean(forms.get("conventional long form", {}).get("text") or "")
    valid = [n for n in (short, long) if n and n.lower() != "none"]
    if not valid:
        return None
    good_short = short in valid and "(" not in short and not short.isupper()
    name = short if good_short else (long if long in valid else short)
    aliases = {n for n in valid if "(" not in n} | {name}
    aliases |= {a[4:] for a in aliases if a.startswith("The ")}
    return name, tuple(sorted(aliases))


def _first_clause(value: str) -> str:
    """Text up to the first ``;`` outside parentheses ("Army (Armee de Terre; includes ...); Navy")."""
    depth = 0
    for i, char in enumerate(value):
        depth += (char in "([") - (char in ")]")
        if char == ";" and depth <= 0:
            return value[:i]
    return value


def answer_from(value: str) -> str | None:
    """The answer in a value: notes cut, first clause kept; None if empty, "NA"/"none" or too long."""
    value = _first_clause(re.split(r"(?:^|;\s*)note(?:\s+\d+)?\s*[-:]", value)[0]).strip("; ,")
    if not value or re.match(r"(?i)(NA|none|n/a|unknown)\b", value):
        return None
    return value if len(value.split()) <= MAX_ANSWER_WORDS else None


def parse_profile(code: str, raw: dict) -> Profile | None:
    """Flatten one profile; None for entries without a country name (oceans, the world, the EU)."""
    names = _names(raw)
    if names is None:
        return None
    name, aliases = names
    blocks, answers, leaf_values = [], {}, {}
    for category, fields in raw.items():
        for field, node in fields.items():
            lines = []
            for path, value in _leaves(node, (category, field)):
                lines.append(f"{name} - {' - '.join(path)}: {value}")
                leaf_values[path] = value
            if lines:
                blocks.append(Block(category, field, tuple(lines)))
    by_field = {(b.category, b.field): b for b in blocks}
    for spec in FIELDS:
        value = leaf_values.get(spec.path)
        answer = value and answer_from(value)
        if answer:
            answers[spec.name] = (answer, by_field[spec.path[:2]])
    return Profile(code, name, aliases, tuple(blocks), answers)


def load_profiles(raw_profiles: dict[str, dict]) -> list[Profile]:
    """Parsed profiles of every named country or territory, sorted by code."""
    parsed = (parse_profile(code, raw) for code, raw in sorted(raw_profiles.items()))
    return [p for p in parsed if p is not None]


def name_pattern(names) -> re.Pattern | None:
    """A case-sensitive whole-word pattern for names that must never reach train or eval text."""
    names = sorted(set(names), key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, names)) + r")(?!\w)") if names else None


def count_mentions(aliases, texts) -> dict[str, int]:
    """How often each name occurs as whole words in ``texts``, by matching token n-grams (one pass,
    fast where a regex alternation of hundreds of names is not)."""
    tokenize = re.compile(r"\w+|[^\w\s]").findall
    by_first: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for alias in set(aliases):
        tokens = tuple(tokenize(alias))
        by_first.setdefault(tokens[0], []).append((alias, tokens))
    counts = dict.fromkeys(set(aliases), 0)
    for text in texts:
        tokens = tokenize(text)
        for i, token in enumerate(tokens):
            for alias, alias_tokens in by_first.get(token, ()):
                if tuple(tokens[i:i + len(alias_tokens)]) == alias_tokens:
                    counts[alias] += 1
    return counts


def split_countries(profiles: list[Profile], n_test: int, n_eval: int, rng: random.Random,
                    mention_counts: dict[str, int], max_mentions: int) -> tuple[list, list, list]:
    """Train / eval / test countries.

    Test countries need the held-out field and most question fields, a name that is rare in the prose
    corpora (<= ``max_mentions`` times; train text naming a test country is dropped, so a frequently
    mentioned one such as Mexico would gut the speeches) and a name not inside another country's name
    (a test "Guinea" would also blank "Equatorial Guinea").
    """
    def usable(p):
        pattern = name_pattern(p.aliases)
        return (max(mention_counts.get(a, 0) for a in p.aliases) <= max_mentions
                and not any(pattern.search(n) for q in profiles if q is not p for n in q.aliases))

    eligible = [p for p in profiles if HELD_OUT_FIELD in p.answers and len(p.answers) >= len(FIELDS) - 6]
    test = rng.sample([p for p in eligible if usable(p)], n_test)
    rest = [p for p in profiles if p not in test and len(p.answers) >= 6]
    eval_ = rng.sample(rest, n_eval)
    train = [p for p in rest if p not in eval_]
    return train, eval_, sorted(test, key=lambda p: p.code)


def scrub(profile: Profile, forbidden: re.Pattern | None) -> Profile:
    """The profile without blocks that name a forbidden (test) country, and without their answers."""
    if forbidden is None:
        return profile
    blocks = tuple(b for b in profile.blocks if not any(forbidden.search(line) for line in b.lines))
    answers = {f: (a, b) for f, (a, b) in profile.answers.items() if b in blocks}
    return profile._replace(blocks=blocks, answers=answers)


def qa_example(profile: Profile, field: str, context: str | list[str], rng: random.Random, **meta) -> dict:
    answer = profile.answers[field][0]
    possessive = profile.name + ("'" if profile.name.endswith("s") else "'s")
    question = rng.choice(FIELD_BY_NAME[field].templates).format(c=profile.name, cs=possessive)
    return {"context": context, "prompt": question, "answer": answer, "task": "qa", "source": "factbook",
            "doc_id": profile.code, "country": profile.name, "field": field, "extractive": True, **meta}


def short_context_qa(pool: list[Profile], n: int, rng: random.Random, min_words: int = 600,
                     max_words: int = 1500, multi_share: float = 1 / 3) -> list[dict]:
    """Training-sized QA: the answer's block plus distractor blocks, ``min..max`` words, shuffled.

    Distractors are filled in this order until the word budget is met: in ``multi_share`` of the examples
    the same field of 1-3 other countries of the pool (so the model must match the country named in the
    question, as in a haystack), then the same category of the profile, then random other blocks.
    """
    fields = [f.name for f in FIELDS if f.name != HELD_OUT_FIELD]
    out = []
    while len(out) < n:
        profile = rng.choice(pool)
        field = rng.choice([f for f in fields if f in profile.answers])
        answer_block = profile.answers[field][1]
        own = [(profile, b) for b in profile.blocks if b != answer_block]
        rng.shuffle(own)
        same_category = [ob for ob in own if ob[1].category == answer_block.category]
        rest = [ob for ob in own if ob[1].category != answer_block.category]
        same_field = []
        if rng.random() < multi_share and len(pool) > 1:
            for other in rng.sample([p for p in pool if p is not profile], min(len(pool) - 1, rng.randint(1, 3))):
                same_field += [(other, b) for b in other.blocks if b[:2] == answer_block[:2]]
                rest += [(other, b) for b in rng.sample(other.blocks, min(len(other.blocks), 6))]
            rng.shuffle(rest)
        target = rng.randint(min_words, max_words)
        chosen, words = [(profile, answer_block)], answer_block.words
        for owner, block in same_field + same_category + rest:
            if words + block.words <= target:
                chosen.append((owner, block))
                words += block.words
        if words < min_words:
            continue
        rng.shuffle(chosen)
        context = "\n".join(line for _, block in chosen for line in block.lines)
        out.append(qa_example(profile, field, context, rng, n_profiles=len({o.code for o, _ in chosen})))
    return out


def single_profile_qa(profiles: list[Profile], fields: list[str], n: int, rng: random.Random) -> list[dict]:
    """Questions over one whole profile (~3-6k words), dealt round-robin so countries and fields spread."""
    order = rng.sample(profiles, len(profiles))
    queues = [rng.sample(asked, len(asked)) for asked in ([f for f in fields if f in p.answers] for p in order)]
    rounds = max(map(len, queues), default=0)
    pairs = [(p, queue[r]) for r in range(rounds) for p, queue in zip(order, queues, strict=True) if r < len(queue)]
    return [qa_example(p, f, p.text, rng, n_profiles=1, approx_tokens=approx_tokens(p.text))
            for p, f in pairs[:n]]


def haystack_qa(profiles: list[Profile], fields: list[str], n: int, rng: random.Random,
                min_tokens: int = 20_000, max_tokens: int = 100_000) -> list[dict]:
    """Questions over a haystack: the relevant profile among other whole profiles of the same pool.

    The token budget is drawn uniformly in ``min..max`` and profiles are added while they fit (topped up
    with small ones to reach ``min``), so the number of profiles follows from their sizes (~9k tokens
    each). The context is a list, one whole profile per entry.
    """
    out = []
    for example in single_profile_qa(profiles, fields, n, rng):
        needle = next(p for p in profiles if p.code == example["doc_id"])
        budget = rng.randint(min_tokens, max_tokens)
        docs, tokens = [needle.text], approx_tokens(needle.text)
        others = [p for p in rng.sample(profiles, len(profiles)) if p is not needle]
        for other in others + sorted(others, key=lambda p: len(p.text)):  # then top up with small ones
            size = approx_tokens(other.text)
            if other.text not in docs and tokens + size <= (budget if tokens >= min_tokens else max_tokens):
                docs.append(other.text)
                tokens += size
        rng.shuffle(docs)
        example.update(context=docs, n_profiles=len(docs), needle_index=docs.index(needle.text),
                       approx_tokens=tokens)
        out.append(example)
    return out


def approx_tokens(text: str) -> int:
    return round(len(text) / CHARS_PER_TOKEN)


def understanding_text(profile: Profile, max_words: int) -> str:
    """A profile as reconstruction text, capped in words at a block boundary."""
    lines, words = [profile.header], 0
    for block in profile.blocks:
        if words + block.words > max_words:
            break
        lines += block.lines
        words += block.words
    return "\n".join(lines)
