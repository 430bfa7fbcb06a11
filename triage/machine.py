"""What depends on the machine a stage runs on: native bfloat16, its matmul peak, the serving
environment.

The same params train and serve differently on a GPU, on a CPU with native bfloat16 and on
one without; and vLLM lives in an environment of its own. Both the train stage and the
server ask here, so they make the same choice.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

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


MATMUL_SHAPES = (  # (m, k, n): SmolLM2-135M's projections and head at ~1,200 tokens, a square
    (1200, 576, 1536),
    (1200, 1536, 576),
    (1200, 576, 49152),
    (2048, 2048, 2048),
)


def matmul_peak(dtype: str, device: str = "cpu") -> dict[str, Any]:
    """This machine's best torch.matmul rate in `dtype` (TFLOP/s, median of 5 timings per shape).

    What a training step could reach if it did nothing but multiply matrices: the train stage
    reports its own rate as a fraction of it, so a slow run tells whether the machine or the
    step is to blame. Takes about a second on a 2-core CPU in bfloat16 with AMX.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    rates = {}
    for m, k, n in MATMUL_SHAPES:
        a = torch.randn(m, k, dtype=torch_dtype, device=device)
        b = torch.randn(k, n, dtype=torch_dtype, device=device)
        times = []
        for _ in range(6):  # the first is a warm-up
            if device != "cpu":
                torch.cuda.synchronize()
            started = time.perf_counter()
            torch.matmul(a, b)
            if device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        rates[f"{m}x{k}x{n}"] = round(2 * m * k * n / statistics.median(times[1:]) / 1e12, 3)
    return {"tflops": max(rates.values()), "per_shape": rates}
