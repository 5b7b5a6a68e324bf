"""Training tasks made from a user's own documents, no labels needed (the ``auto`` extra: spaCy and its English
pipeline, ``pip install "e2llm-plugin[auto]"``).

`questions` holds the rule-based question generator (entity wh-questions, counterfactual swaps, whole-document and
descriptive questions); `tasks` turns documents into the JSONL lines `python -m e2llm_plugin.finetune` reads, which is
what ``finetune --documents`` does. Importing either needs no spaCy; generating does, and without it raises
`MissingExtraError` naming the install command.
"""
from .tasks import Recipe, build_lines, split_documents, task_counts

__all__ = ["Recipe", "build_lines", "split_documents", "task_counts"]
