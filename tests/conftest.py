"""Shared fixtures: tiny random base models built from configs (milliseconds), and PDFs made on the fly."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from e2llm_plugin import E2LLM, E2LLMConfig, embedded
from e2llm_plugin.config import EMBEDDED_DECODER, EMBEDDED_ENCODER, LoraConfig

LOREM = (
    "The Republic of Austria celebrates its National Day on 26 October. The holiday recalls the declaration of "
    "permanent neutrality in 1955.\nVienna is the capital and largest city. The Danube flows through it from west "
    "to east! Do rivers ever rest? Mountains cover much of the west; the Alps dominate the landscape.\n"
)


@pytest.fixture(scope="session", autouse=True)
def private_store(tmp_path_factory):
    """The tests' compressed-chunk store: the default one (E2LLM_STORE), but in a temporary folder, not the user's."""
    import os

    path = tmp_path_factory.mktemp("store") / "compressed.sqlite"
    os.environ["E2LLM_STORE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """A 2-layer BERT and a 2-layer Llama with the real tokenizers, saved like Hub models."""
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    enc_tok = AutoTokenizer.from_pretrained(embedded.resolve(EMBEDDED_ENCODER))
    BertModel(BertConfig(vocab_size=enc_tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(root / "encoder")
    enc_tok.save_pretrained(root / "encoder")
    dec_tok = AutoTokenizer.from_pretrained(embedded.resolve(EMBEDDED_DECODER))
    LlamaForCausalLM(LlamaConfig(vocab_size=len(dec_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                 eos_token_id=dec_tok.eos_token_id, tie_word_embeddings=True)).save_pretrained(root / "decoder")
    dec_tok.save_pretrained(root / "decoder")
    return str(root / "encoder"), str(root / "decoder")


@pytest.fixture(scope="session")
def tiny_config(tiny_dirs):
    encoder, decoder = tiny_dirs
    decoder_lora = LoraConfig(r=2, alpha=32, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    return E2LLMConfig(encoder=encoder, decoder=decoder, chunk_tokens=24, encoder_lora=LoraConfig(r=2), decoder_lora=decoder_lora,
                       max_new_tokens=8, hybrid_raw_tokens=48)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A tiny finetune data set (train, eval): QA lines with one and two documents, and an understanding-only line."""
    root = tmp_path_factory.mktemp("data")
    lines = [{"context": [LOREM, "Cats hunt at night. " * 6], "prompt": "When is the National Day?", "answer": "26 October"},
             {"context": "Cats sleep for most of the day. They hunt at night. " * 5, "prompt": "When do cats hunt?",
              "answer": "At night."},
             {"text": LOREM * 2}]
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(lines[i % 3]) + "\n" for i in range(10)))
    evaluation = root / "eval.jsonl"
    evaluation.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return train, evaluation


@contextlib.contextmanager
def configured(model: E2LLM, **settings):
    """The model's config with ``settings`` set for the block (unvalidated, as a user assigning them would), then restored."""
    before = {name: getattr(model.config, name) for name in settings}
    for name, value in settings.items():
        setattr(model.config, name, value)
    try:
        yield model
    finally:
        for name, value in before.items():
            setattr(model.config, name, value)


def build_tiny_model(config: E2LLMConfig, seed: int = 0) -> E2LLM:
    torch.manual_seed(seed)
    model = E2LLM(config)
    # Untrained LoRA B matrices are zero; give them values so save/load tests would notice a lost tensor.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    return build_tiny_model(tiny_config)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-e2llm"
    tiny_model.save_pretrained(path)
    return path


def make_pdf(path, pages: list[str]) -> None:
    """A real text PDF, one string per page (fpdf2 with a core font, so Latin-1 text only)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 5, text.encode("latin-1", "replace").decode("latin-1"))
    pdf.output(str(path))
