"""params.yaml as the stages read it: loading, the schema of its sections, the one error type.

Every stage reads `params.yaml` through `load_params` and raises `PipelineError` for anything
the user can fix (bad input, bad params): `files.run_main` prints it as one line and exits 1.

The sections this project defines (`prepare`, `tasks`, `serve`, `evaluate`, and the split's
`val_size` / `seed`) have a pydantic schema here, `Prepare`, `Task`, `Serve`, `Evaluate`,
`Split`; a stage checks its sections with `validated` before it starts work, and a bad value
fails in one line that names its params path (`params.yaml serve.port: Input should be less
than 65536, got 70000`). The top-level LlamaFactory arguments are LlamaFactory's to check.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


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


class Section(BaseModel):
    """A params.yaml section. Strict types: YAML reads `yes`, `on` and `true` as booleans, and
    a boolean is no number here. Other keys pass (vLLM flags, keys a later version reads)."""

    model_config = ConfigDict(strict=True, extra="allow")


class Split(Section):
    """The top-level keys the prepare stage shares with LlamaFactory."""

    val_size: float = Field(0, ge=0, lt=1)
    seed: int = Field(ge=0)


class Prepare(Section):
    input: str = Field(min_length=1)
    id_column: str | None = None  # null: an id made from the ticket text
    group_column: str | None = Field(None, min_length=1)  # null: tickets split one by one
    val_groups: int | None = Field(None, ge=1)  # null: validation as whole groups
    duplicates: Literal["error", "drop"] = "error"
    text_columns: list[str] = Field(min_length=1)
    text_template: str | None = None  # null: the text columns, a blank line between them
    max_chars: int = Field(ge=1)
    test_size: float = Field(gt=0, lt=1)
    min_per_class: int = Field(ge=2)  # a stratified split needs two tickets of each class
    max_tickets: int | None = Field(None, ge=1)
    stratify: str | None = None
    balance: str | None = None
    records: Literal["ticket", "task"] = "ticket"
    max_samples: None = Field(None, description="renamed to prepare.max_tickets")

    @field_validator("max_samples", mode="before")
    @classmethod
    def _renamed(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("renamed to prepare.max_tickets")
        return value

    @model_validator(mode="after")
    def _template_fields(self) -> Prepare:
        template = self.text_template or "\n\n".join(f"{{{c}}}" for c in self.text_columns)
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as e:  # unbalanced braces
            raise ValueError(f"text_template: {e} (write {{{{ for a brace)") from None
        for field in fields:
            if field not in self.text_columns:
                raise ValueError(
                    f"text_template: unknown placeholder {{{field}}} "
                    f"(placeholders are the text_columns: {', '.join(self.text_columns)})"
                )
        self.text_template = template
        return self


class Task(Section):
    kind: Literal["classification", "generation"]
    column: str = Field(min_length=1)
    instruction: str = Field(min_length=1)
    labels: list[str | int] | None = Field(None, min_length=1)  # null: from the training split
    max_tokens: int | None = Field(None, ge=1)  # generation: the answer cap

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str | int] | None) -> list[str | int] | None:
        if labels is not None and len(set(map(str, labels))) != len(labels):
            raise ValueError("a label is listed twice")
        return labels

    @model_validator(mode="after")
    def _generation_has_no_labels(self) -> Task:
        if self.kind == "generation" and (self.labels or "{labels}" in self.instruction):
            raise ValueError("a generation task has no labels")
        return self


class Serve(Section):
    max_model_len: int = Field(ge=1)
    max_num_seqs: int = Field(ge=1)
    port: int | None = Field(None, gt=0, lt=65536)  # null: a free port
    startup_timeout_s: float = Field(300, gt=0)
    cpu_kvcache_space_gib: float = Field(1, gt=0)
    cpu_num_of_reserved_cpu: int | None = Field(None, ge=0)  # null: vLLM's default


class Evaluate(Section):
    serve: Literal["merged", "adapter"] = "merged"
    base_url: str | None = Field(None, pattern=r"^https?://")  # null: start vLLM here
    api_key_env: str | None = None
    concurrency: int = Field(ge=1)
    max_tokens: int | None = Field(None, ge=1)  # null: sized from the training answers
    request_timeout_s: float = Field(gt=0)
    retries: int = Field(ge=0)

    @model_validator(mode="after")
    def _key_for_remote(self) -> Evaluate:
        if self.base_url and not self.api_key_env:
            raise ValueError("api_key_env: expected an environment variable name for base_url")
        return self


S = TypeVar("S", bound=BaseModel)


def validated(model: type[S], value: Any, where: str) -> S:
    """`value` (the params.yaml section at `where`, e.g. "serve" or "tasks.priority") checked
    against its schema; the first error, and how many more, in one line naming its path."""
    if not isinstance(value, dict):
        raise PipelineError(f"params.yaml {where}: expected a mapping, got {value!r}")
    try:
        return model.model_validate(value)
    except ValidationError as e:
        errors = e.errors()
        first = errors[0]
        loc = ".".join(str(part) for part in (where, *first["loc"]) if part != "")
        message = first["msg"].removeprefix("Value error, ")
        # a section-wide check names its key first ("text_template: ..."): it goes in the path
        if ": " in message and message.split(": ", 1)[0].isidentifier():
            key, message = message.split(": ", 1)
            loc = f"{loc}.{key}"
        got = "" if first["type"] in ("missing", "value_error") else f", got {first['input']!r}"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PipelineError(f"params.yaml {loc}: {message}{got}{more}") from None


def param_integer(value: Any, name: str, minimum: int) -> int:
    """A params.yaml integer (YAML's true/false are not integers here, though Python says so)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PipelineError(f"params.yaml {name}: expected an integer >= {minimum}, got {value!r}")
    return value


def model_name_or_path(folder: str | Path = "models/base") -> str:
    """What the base_model stage materialised (`source.json`: a folder in models/, a local
    path or a hub id)."""
    source = Path(folder) / "source.json"
    try:
        return json.loads(source.read_text(encoding="utf-8"))["model_name_or_path"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as e:
        raise PipelineError(f"{source}: missing or invalid; run `dvc repro base_model`") from e
