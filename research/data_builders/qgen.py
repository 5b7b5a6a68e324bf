"""The rule-based question generator, which lives in the package (``e2llm_plugin.autodata.questions``); re-exported
under its old name for the research builders."""
from __future__ import annotations

from e2llm_plugin.autodata.questions import (  # noqa: F401
    BOTH_TEMPLATES,
    COUNT_TEMPLATES,
    FIRST_TEMPLATES,
    MAX_ANSWER_WORDS,
    MOST_TEMPLATES,
    NEXT_TEMPLATES,
    PREV_TEMPLATES,
    PRONOUNS,
    SECTION_TEMPLATES,
    SWAP_LABELS,
    TITLE_TEMPLATES,
    WHOLE_KINDS,
    available,
    candidates,
    content_words,
    count_mentions,
    counterfactual,
    good_answer,
    nlp,
    pipeline_name,
    question_from,
    support_sentence,
    swap,
    whole_document,
    word_pattern,
)
