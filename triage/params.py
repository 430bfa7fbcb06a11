"""params.yaml as the stages read it: loading, the checks of single values, the one error type.

Every stage reads `params.yaml` through `load_params` and raises `PipelineError` for anything
the user can fix (bad input, bad params): `files.run_main` prints it as one line and exits 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


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


def model_name_or_path(folder: str | Path = "models/base") -> str:
    """What the base_model stage materialised (`source.json`: a folder in models/, a local
    path or a hub id)."""
    source = Path(folder) / "source.json"
    try:
        return json.loads(source.read_text(encoding="utf-8"))["model_name_or_path"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as e:
        raise PipelineError(f"{source}: missing or invalid; run `dvc repro base_model`") from e
