"""Bridges from E2LLM to LLM frameworks; each imports its framework lazily, from its own extra."""
