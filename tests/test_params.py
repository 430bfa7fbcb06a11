"""The params schema (triage/params.py): the committed params.yaml passes, and a bad value
fails in one line that names its params path."""

from __future__ import annotations

import pytest

from tests.helpers import PARAMS
from triage.dataset import check_params
from triage.params import Evaluate, PipelineError, Prepare, Serve, Task, validated


def test_the_committed_params_pass_the_schema() -> None:
    validated(Serve, PARAMS["serve"], "serve")
    validated(Evaluate, PARAMS["evaluate"], "evaluate")
    prep, tasks = check_params(PARAMS)
    assert prep["text_template"] == PARAMS["prepare"]["text_template"]
    assert tasks == PARAMS["tasks"]


def test_a_yaml_boolean_is_no_number() -> None:
    """`max_num_seqs: yes` reads as True, which Python would take for 1."""
    with pytest.raises(PipelineError) as e:
        validated(Serve, {**PARAMS["serve"], "max_num_seqs": True}, "serve")
    assert (
        str(e.value) == "params.yaml serve.max_num_seqs: Input should be a valid integer, got True"
    )


def test_the_first_error_is_named_and_the_rest_counted() -> None:
    bad = {**PARAMS["evaluate"], "concurrency": 0, "retries": -1}
    with pytest.raises(PipelineError) as e:
        validated(Evaluate, bad, "evaluate")
    assert str(e.value) == (
        "params.yaml evaluate.concurrency: Input should be greater than or equal to 1, got 0"
        " (and 1 more)"
    )


@pytest.mark.parametrize(
    ("model", "where", "section", "change", "expected"),
    [
        (Prepare, "prepare", "prepare", {"test_size": 1.0},
         "prepare.test_size: Input should be less than 1, got 1.0"),
        (Prepare, "prepare", "prepare", {"max_samples": 40},
         "prepare.max_samples: renamed to prepare.max_tickets"),
        (Prepare, "prepare", "prepare", {"text_template": "{subject"},
         "prepare.text_template: expected '}' before end of string (write {{ for a brace)"),
        (Task, "tasks.priority", ("tasks", "priority"), {"labels": ["low", "low"]},
         "tasks.priority.labels: a label is listed twice"),
        (Task, "tasks.summary", ("tasks", "summary"), {"labels": ["a"]},
         "tasks.summary: a generation task has no labels"),
        (Evaluate, "evaluate", "evaluate", {"base_url": "http://h:8000", "api_key_env": None},
         "evaluate.api_key_env: expected an environment variable name for base_url"),
        (Serve, "serve", "serve", {"port": 70000},
         "serve.port: Input should be less than 65536, got 70000"),
    ],
)  # fmt: skip
def test_each_error_names_its_params_path(model, where, section, change, expected) -> None:
    base = PARAMS[section] if isinstance(section, str) else PARAMS[section[0]][section[1]]
    with pytest.raises(PipelineError) as e:
        validated(model, {**base, **change}, where)
    assert str(e.value) == f"params.yaml {expected}"


def test_a_stage_checks_the_split_keys_at_the_top_level() -> None:
    with pytest.raises(PipelineError, match="^params.yaml seed: Input should be greater than"):
        check_params({**PARAMS, "seed": -1})
    with pytest.raises(PipelineError, match="test_size \\+ val_size: nothing left to train on"):
        check_params({**PARAMS, "val_size": 0.9})
