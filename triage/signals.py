"""SIGTERM and SIGHUP as an exception, so that a stage that runs a child cleans it up.

A killed `dvc repro` or a CI timeout sends SIGTERM (a closed terminal SIGHUP); Python's
default would end the stage at once and leave the child (the vLLM server, LlamaFactory)
running. The server and the train stage install `raise_terminated` while their child runs.
A parent killed outright (SIGKILL of `dvc repro`, an OOM kill) sends nothing: `die_with_parent`
asks the kernel to send SIGTERM then, for every stage (triage/files.py `run_main`) and for
LlamaFactory under the train stage.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while a child process was running (a KeyboardInterrupt, so
    that `except Exception` blocks do not swallow it and every `finally` runs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signal.Signals(signum).name}")
        self.signum = signum


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def die_with_parent() -> None:
    """SIGTERM to this process when its parent dies (Linux PR_SET_PDEATHSIG; no-op elsewhere).

    DVC does not stop a stage when it is killed itself, so a killed `dvc repro` would leave
    the stage, and the vLLM server or LlamaFactory it runs, working on. Also safe as a
    Popen preexec_fn: it only calls prctl and getppid.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
