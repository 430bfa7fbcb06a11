"""Stage configure: render LlamaFactory's own config files from params.yaml.

`configs/train.yaml` and `configs/export.yaml` are committed (DVC `cache: false`), so a
reviewer sees the exact training config of a pull request, and anyone can run them by hand:

    llamafactory-cli train configs/train.yaml            # add use_cpu=true on a CPU-only box
    llamafactory-cli train configs/train.yaml lora_rank=32
    llamafactory-cli export configs/export.yaml

Every top-level scalar of params.yaml is a LlamaFactory argument and is copied verbatim,
except `val_size`, which the prepare stage applies per ticket (LlamaFactory's own val_size
would split (ticket, task) records, putting tasks of one ticket on both sides). The configs
hold only what defines the experiment; what depends on the machine (use_cpu, logging
backends, number of processes) is added by the train stage at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from triage.files import run_main, write_yaml
from triage.params import PipelineError, load_params, model_name_or_path

TRAIN_OUT = Path("configs/train.yaml")
EXPORT_OUT = Path("configs/export.yaml")
HANDLED_BY_PREPARE = {"val_size"}
HEADER = "# Rendered by stages/configure.py from params.yaml: change params.yaml, not this file.\n"


def llamafactory_args(params: dict[str, Any]) -> dict[str, Any]:
    """Top-level scalars of params.yaml, i.e. the LlamaFactory arguments, with alpha resolved."""
    args: dict[str, Any] = {}
    for key, value in params.items():
        if key == "lora_alpha" and value is None:
            # LlamaFactory's own default, written out so the config shows the number
            value = 2 * int(params["lora_rank"])
        if key == "lora_target" and isinstance(value, list):  # -S 'lora_target=[q_proj,v_proj]'
            value = ",".join(value)
        if isinstance(value, dict | list) or key in HANDLED_BY_PREPARE or value is None:
            continue
        args[key] = value
    return args


def train_config(params: dict[str, Any]) -> dict[str, Any]:
    """The LoRA SFT config: pipeline wiring first, then every hyperparameter from params."""
    config: dict[str, Any] = {
        "model_name_or_path": model_name_or_path(),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "dataset_dir": "data/prepared",
        "dataset": "tickets_train",
        "eval_dataset": "tickets_validation",
        "output_dir": "runs/train",  # checkpoints; the train stage moves the result to models/
        "overwrite_cache": True,
        "plot_loss": False,  # the train stage writes DVC plots from trainer_log.jsonl instead
        "include_num_input_tokens_seen": "non_padding",  # tokens/s of real tokens, not padding
    }
    config.update(llamafactory_args(params))
    if params.get("eval_strategy", "no") == "no":
        config.pop("eval_dataset")
    return config


def export_config(params: dict[str, Any]) -> dict[str, Any]:
    """Merge the adapter into the base model (safetensors) for serving."""
    return {
        "model_name_or_path": model_name_or_path(),
        "adapter_name_or_path": "models/adapter",
        "template": params["template"],
        "default_system": params["default_system"],
        "finetuning_type": "lora",
        "export_dir": "models/merged",
        "export_size": int(params.get("merge", {}).get("export_size", 5)),
        "export_device": params.get("merge", {}).get("export_device", "cpu"),
        "export_legacy_format": False,
    }


def main() -> None:
    params = load_params()
    for key in ("template", "default_system", "lora_rank", "learning_rate"):
        if key not in params:
            raise PipelineError(f"params.yaml: missing top-level key {key!r}")
    write_yaml(TRAIN_OUT, train_config(params), HEADER)
    write_yaml(EXPORT_OUT, export_config(params), HEADER)
    print(f"configure: wrote {TRAIN_OUT} and {EXPORT_OUT}")


if __name__ == "__main__":
    run_main(main)
