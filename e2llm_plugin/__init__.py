"""E2LLM for LlamaIndex and LangChain: read whole long documents as soft prompts instead of retrieving a few chunks.

The core (`E2LLM`, `E2LLMConfig`) needs only torch and transformers; the integrations import their frameworks
lazily, on first use of `E2LLMQueryEngine`, `ChatE2LLM`, `create_e2llm_chain` or `load_pdf`.
"""

from .config import E2LLMConfig, GenerationConfig, LoraConfig
from .context import CompressedContext
from .errors import (
    CheckpointError,
    ConfigError,
    DocumentError,
    E2LLMError,
    MissingModelError,
    StoreError,
    UnreadableTextWarning,
)
from .model import E2LLM, Answer
from .store import CompressedStore

__version__ = "0.1.0"

_LAZY = {
    "E2LLMQueryEngine": "e2llm_plugin.integrations.llama_index",
    "E2LLMSynthesizer": "e2llm_plugin.integrations.llama_index",
    "E2LLMCustomLLM": "e2llm_plugin.integrations.llama_index",
    "E2LLMEmbedding": "e2llm_plugin.integrations.llama_index",
    "ChatE2LLM": "e2llm_plugin.integrations.langchain",
    "create_e2llm_chain": "e2llm_plugin.integrations.langchain",
    "load_pdf": "e2llm_plugin.integrations.langchain",
}

__all__ = [
    "E2LLM", "Answer", "CompressedContext", "CompressedStore",
    "E2LLMConfig", "LoraConfig", "GenerationConfig",
    "E2LLMError", "ConfigError", "DocumentError", "CheckpointError", "MissingModelError", "StoreError",
    "UnreadableTextWarning",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'e2llm_plugin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
