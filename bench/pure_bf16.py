"""`llamafactory-cli train` with LlamaFactory's refusal of `pure_bf16` on a CPU lifted, for
bench.train_options only; the pipeline never uses it.

LlamaFactory 0.9.5 accepts `pure_bf16` (the model in bfloat16 without autocast; PEFT upcasts
the adapters to float32 all the same) only on a GPU or NPU with bfloat16 (`hparams/parser.py`).
On a CPU the default trains under bf16 autocast, whose casts are a fifth of a step on a Xeon
with AMX (BENCHMARKS.md); this measures whether a CPU with native bfloat16 would train faster
without them. Arguments are those of `llamafactory-cli train`.
"""

import llamafactory.hparams.parser as parser
from llamafactory.train.tuner import run_exp

if __name__ == "__main__":
    parser.is_torch_bf16_gpu_available = lambda: True  # looked up when the arguments are checked
    run_exp()
