"""LangChain's own conformance suites (langchain-tests, pinned in the dev extra) run on ChatE2LLM.

The unit suite never loads weights (it also times construction, which must stay cheap). The integration suite
answers with the shipped checkpoint: loaded once per process, since every ChatE2LLM naming it shares it.

Tests the suites skip for this model, each because of a property set below (also listed in docs/langchain.md):
- tool calling, tool choice, structured output, JSON mode, agent loop: not offered; the 135M decoder was never
  trained to emit tool calls or JSON, and claiming them would make chains fail at run time instead of up front;
- image, audio, PDF and Anthropic-format inputs: the decoder reads text only (PDFs go through `load_pdf` and
  `create_e2llm_chain`, which read every page);
- per-call model override: a checkpoint is chosen when constructing ChatE2LLM; switching per call would load
  another pair of base models mid-chain;
- serialization (test_serdes) and init from environment: a local model has no LangChain-serializable config (it
  may hold an in-memory E2LLM) and no API key or endpoint to read from the environment;
- test_stream_time: a VCR benchmark of recorded HTTP traffic; a local model makes no HTTP calls.
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from e2llm_plugin import ChatE2LLM


class _E2LLMCapabilities:
    @property
    def chat_model_class(self) -> type[ChatE2LLM]:
        return ChatE2LLM

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False


class TestChatE2LLMUnit(_E2LLMCapabilities, ChatModelUnitTests):
    @property
    def standard_chat_model_params(self) -> dict:
        # The suite adds api_key, timeout and max_retries for hosted APIs; ChatE2LLM refuses unknown settings
        # rather than ignore them, and a local model has none of those three.
        params = super().standard_chat_model_params
        return {key: params[key] for key in ("temperature", "max_tokens", "stop")}


@pytest.mark.slow
class TestChatE2LLMIntegration(_E2LLMCapabilities, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        # Short answers keep the suite's ~30 generations within CI's budget on CPU; the tests check structure.
        return {"max_tokens": 8}
