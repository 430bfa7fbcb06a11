"""The embedded ticket set is reproducible from its generator, byte for byte; its templates load."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import os
import re
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def generate(tmp_path: Path, seed: int, n: int = 2400) -> bytes:
    out = tmp_path / f"tickets-{seed}-{n}.csv"
    cmd = [sys.executable, "data/make_tickets.py", "--seed", str(seed), "--n", str(n)]
    subprocess.run([*cmd, "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    return out.read_bytes()


def test_committed_tickets_are_the_generator_output(tmp_path: Path) -> None:
    committed = (REPO / "data" / "raw" / "tickets.csv").read_bytes()
    assert hashlib.sha256(generate(tmp_path, 42)).digest() == hashlib.sha256(committed).digest()


def test_another_seed_gives_other_tickets(tmp_path: Path) -> None:
    a, b = generate(tmp_path, 1, n=300), generate(tmp_path, 2, n=300)
    assert a != b
    assert (
        a.splitlines()[0]
        == b.splitlines()[0]
        == b"id,subject,body,category,priority,summary,template"
    )


def generator():
    """data/make_tickets.py as a module (data/ is not a package), as bench/priority_cues.py does."""
    spec = importlib.util.spec_from_file_location("make_tickets", REPO / "data" / "make_tickets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_templates_load_from_yaml() -> None:
    gen = generator()
    tables = gen.load_templates(REPO / "data" / "templates")
    assert tables["CUES"] == gen.CUES and len(gen.CUES) == len(gen.LEVELS) == 4
    assert set(gen.INTENTS) == set(gen.CATEGORY_WEIGHTS) == set(gen.ASIDES)
    assert all(
        isinstance(intent, gen.Intent) for intents in gen.INTENTS.values() for intent in intents
    )
    assert gen.SIGNOFFS[-1] == ""  # quoted in YAML, not null
    assert "Re: Support request" in gen.VAGUE_SUBJECTS  # quoted in YAML, not a mapping


@pytest.mark.parametrize(
    ("file", "old", "new", "error"),
    [
        ("cues.yaml", "  high:", "  hihg:", r"cues\.yaml: cues: missing high; unknown hihg"),
        ("framing.yaml", "  - ''", "  - yes", r"framing\.yaml: signoffs\[7\]: expected a string"),
        (
            "intents.yaml",
            "ending {last4}; bank",
            "ending {last_4}; bank",
            r"intents\.yaml: intents\.billing\[1\]\.cases\[1\]\.summary: unknown slot \{last_4\}",
        ),
        ("slots.yaml", "\nagents:", "\nagent:", r"slots\.yaml: missing agents; unknown agent"),
    ],
)
def test_malformed_template_names_file_and_key(
    tmp_path: Path, file: str, old: str, new: str, error: str
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "data" / "templates", templates)
    text = (templates / file).read_text(encoding="utf-8")
    assert text.count(old) == 1
    (templates / file).write_text(text.replace(old, new), encoding="utf-8")
    gen = generator()
    with pytest.raises(gen.TemplateError, match=error):
        gen.load_templates(templates)
    # the script stops with that message, not a traceback
    env = {**os.environ, "TICKET_TEMPLATES": str(templates)}
    cmd = [sys.executable, "data/make_tickets.py", "--out", str(tmp_path / "t.csv")]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and re.search(error, result.stderr)
    assert "Traceback" not in result.stderr and not (tmp_path / "t.csv").exists()


def test_template_column_names_the_case_each_ticket_was_made_from(tmp_path: Path) -> None:
    """`template` (category or ambiguous / intent / case, by position) is what
    prepare.group_column splits on: every value must name a case whose summary text the
    ticket's summary carries, literal parts in order, so one value is one template."""
    module = generator()
    rows = list(csv.DictReader(io.StringIO(generate(tmp_path, 3, n=400).decode())))
    for row in rows:
        pool, intent, case = row["template"].split("/")
        intents = module.AMBIGUOUS if pool == "ambiguous" else module.INTENTS[pool]
        _, summary_template = intents[int(intent)].cases[int(case)]
        literals = [text for text, *_ in string.Formatter().parse(summary_template) if text]
        pattern = ".*".join(re.escape(text) for text in literals)
        assert re.search(pattern, row["summary"], re.DOTALL), (row["template"], row["summary"])
    assert len({row["template"] for row in rows}) > 50
