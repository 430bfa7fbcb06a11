"""Stage merge: `llamafactory-cli export configs/export.yaml`, the model that will be served.

The adapter is merged into the base model (safetensors). LlamaFactory keeps a tokenizer's own
chat template for most templates (smollm2 included), and that one differs from what training
used (its default system prompt, for one). A model trained with one prompt format and served
with another is the most common failure of this kind of pipeline, so the exported tokenizer
gets LlamaFactory's rendering of the training template, with the system prompt of params.yaml
as its default: vLLM then formats a request exactly as training did (tests/test_train.py
checks the token ids).

The export goes to a temporary folder first: a failed export leaves no half-written model.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from triage.files import atomic_dir, run_main
from triage.params import PipelineError
from triage.records import training_chat_template

CONFIG = Path("configs/export.yaml")


def install_training_template(folder: Path, template_name: str, default_system: str) -> None:
    """Replace the tokenizer's chat template with the one LlamaFactory trained with."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = training_chat_template(folder, template_name, default_system)
    tokenizer.save_pretrained(folder)


def main() -> None:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    export_dir = Path(config["export_dir"])
    with atomic_dir(export_dir) as tmp:
        cmd = ["llamafactory-cli", "export", str(CONFIG), f"export_dir={tmp}"]
        print("merge: " + " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise PipelineError("llamafactory-cli export failed (see its output above)")
        install_training_template(tmp, config["template"], config["default_system"])
    print(f"merge: wrote {export_dir}")


if __name__ == "__main__":
    run_main(main)
