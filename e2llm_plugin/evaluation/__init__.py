"""Evaluation of E2LLM against text baselines; the command line is ``python -m e2llm_plugin.evaluate``.

- `metrics`: SQuAD-normalised EM / F1, answer-token recall, and a peak-memory probe.
- `methods`: the methods compared (closed book, truncation, full context, RAG on the base and on the tuned
  decoder, E2LLM soft and hybrid), reconstruction fidelity, and the compression-ratio sweep.
- `report`: aggregation, the Markdown tables and the compression plot.
"""
