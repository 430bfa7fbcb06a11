"""Writing outputs so that a failed stage leaves none half-written; running a stage's main.

Every stage writes its outputs through `atomic_dir` / `write_json` / `write_text`, so a failed
or interrupted stage never leaves a half-written output that DVC (or the next stage) could
mistake for a result.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from triage.params import PipelineError
from triage.signals import die_with_parent


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `dest` only if the block succeeds.

    The temporary directory sits beside `dest` (same file system, so the final move is a
    rename) and is removed on any error, including KeyboardInterrupt.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary shared files
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    """Write a file atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON the way DVC metrics diffs read best: sorted keys, indented, newline-ended."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_yaml(path: str | Path, obj: Any, header: str = "") -> None:
    """Write YAML keeping key order (configs are read by people as well as by LlamaFactory)."""
    body = yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=100)
    write_text(path, header + body)


def run_main(main: Callable[[], None], stopped: str = "") -> None:
    """Run a stage's main(): a PipelineError becomes one clear line on stderr and exit 1;
    Ctrl-C, SIGTERM or SIGHUP one line (`stopped` says what was cleaned up) and exit
    128 + the signal, as a shell reports it. The stage ends with its parent (`dvc repro`
    killed outright does not stop it)."""
    die_with_parent()
    try:
        main()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:  # Ctrl-C, or signals.Terminated while a child ran
        signum = getattr(e, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        print(f"error: interrupted ({name}){'; ' + stopped if stopped else ''}", file=sys.stderr)
        sys.exit(128 + signum)
