"""Helpers shared by the stage scripts: params loading, atomic writes, errors, environments.

Every stage reads `params.yaml` and writes its outputs here through `atomic_dir` /
`write_json`, so a failed or interrupted stage never leaves a half-written output that DVC
(or the next stage) could mistake for a result.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


class PipelineError(Exception):
    """An error the user can fix (bad input, bad params): printed as one line, exit code 1."""


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Load params.yaml (DVC runs stages from the repository root)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            params = yaml.safe_load(f)
    except FileNotFoundError as e:
        raise PipelineError(f"{path}: not found") from e
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(params, dict):
        raise PipelineError(f"{path}: expected a mapping at the top level")
    return params


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


def param_integer(value: Any, name: str, minimum: int) -> int:
    """A params.yaml integer (YAML's true/false are not integers here, though Python says so)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PipelineError(f"params.yaml {name}: expected an integer >= {minimum}, got {value!r}")
    return value


def param_positive(value: Any, name: str) -> float:
    """A params.yaml number > 0 (not a boolean)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise PipelineError(f"params.yaml {name}: expected a number > 0, got {value!r}")
    return value


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


def model_name_or_path(folder: str | Path = "models/base") -> str:
    """What the base_model stage materialised (`source.json`: a folder in models/, a local
    path or a hub id)."""
    source = Path(folder) / "source.json"
    try:
        return json.loads(source.read_text(encoding="utf-8"))["model_name_or_path"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as e:
        raise PipelineError(f"{source}: missing or invalid; run `dvc repro base_model`") from e


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


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(): a PipelineError becomes one clear line on stderr and exit 1."""
    try:
        main()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
