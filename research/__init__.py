"""Repo-only research tooling (corpus builders, milestone targets): not part of the `e2llm_plugin` wheel."""
