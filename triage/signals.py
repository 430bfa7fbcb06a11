"""SIGTERM and SIGHUP as an exception, so that a stage that runs a child cleans it up.

A killed `dvc repro` or a CI timeout sends SIGTERM (a closed terminal SIGHUP); Python's
default would end the stage at once and leave the child (the vLLM server, LlamaFactory)
running. The server and the train stage install `raise_terminated` while their child runs.
"""

from __future__ import annotations

import signal
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while a child process was running (a KeyboardInterrupt, so
    that `except Exception` blocks do not swallow it and every `finally` runs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signal.Signals(signum).name}")
        self.signum = signum


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)
