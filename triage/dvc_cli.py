"""The `dvc` command line as the tools (report, study) run it: its output, or one error.

Both read what DVC recorded (`dvc exp show`, `dvc queue status`, `dvc params diff`, ...)
through the `dvc` of PATH (the Makefile puts the pipeline environment first), and both
stop with one line when it is missing or fails.
"""

from __future__ import annotations

import subprocess

from triage.params import PipelineError


def dvc(*args: str) -> str:
    """Run `dvc ARGS` and return its stdout; a PipelineError if it is missing or fails."""
    try:
        proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    except FileNotFoundError as e:
        raise PipelineError("dvc not found on PATH: `make setup`, or `pip install dvc`") from e
    if proc.returncode != 0:
        raise PipelineError(f"dvc {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout
