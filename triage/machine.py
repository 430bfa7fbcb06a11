"""What depends on the machine a stage runs on: native bfloat16, the serving environment.

The same params train and serve differently on a GPU, on a CPU with native bfloat16 and on
one without; and vLLM lives in an environment of its own. Both the train stage and the
server ask here, so they make the same choice.
"""

from __future__ import annotations

import os
from pathlib import Path

from triage.params import PipelineError

ROOT = Path(__file__).resolve().parent.parent  # the repository


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX); unknown counts as yes.

    Where it does not, bf16 is emulated, several times slower than float32, so training and
    serving fall back to float32 there.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def serve_python() -> Path:
    """The Python of the serving (vLLM) environment.

    vLLM and LlamaFactory pin incompatible transformers versions, so serving has its own
    environment. `TICKET_SERVE_PYTHON` (exported by the Makefile) wins; otherwise look for
    `.venv-serve` in the repository or any parent, which also finds it from the temporary
    copies `dvc exp run --queue` works in (they live under `.dvc/tmp/exps/`).
    """
    env = os.environ.get("TICKET_SERVE_PYTHON")
    if env:
        return Path(env)
    for folder in (ROOT, *ROOT.parents):
        candidate = folder / ".venv-serve" / "bin" / "python"
        if candidate.exists():
            return candidate
    raise PipelineError(
        "serving environment not found: run `make setup` or set TICKET_SERVE_PYTHON "
        "to the python of an environment with vLLM"
    )
