"""The record format: what a training record, a served request and a scored answer look like.

One module builds the prompt for training (prepare), for serving (evaluate, `make chat`) and
reads the answers back, so that the prompt a model was trained on and the prompt it is served
with cannot drift apart.

Two layouts, chosen by `prepare.records`:

- `ticket` (default): one record per ticket that answers every task at once, one line per
  task in the order of params.yaml `tasks`::

      category: billing
      priority: high
      summary: Customer was charged twice for the March invoice.

  The ticket text is read once instead of once per task: about a third of the tokens per
  ticket, hence three times the tickets per training minute. Served, the answer is
  constrained to this shape with a regular expression (classification lines to their
  label set). An answer that spans lines (an agent's reply of several paragraphs) is kept
  on its line with its line breaks written `\\n` (and a backslash `\\\\`), and read back
  unescaped, so the model learns and scores the real text.
- `task`: one record per (ticket, task), the classic multi-task layout; the answer is the
  bare label or text.

Every record carries `id`, `tasks` (the task names it answers) and `answers` (the gold answer
per task) beside the alpaca fields; LlamaFactory ignores the extra fields.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

LAYOUTS = ("ticket", "task")


def task_instruction(task: dict[str, Any], labels: list[str] | None) -> str:
    """A task's instruction with `{labels}` replaced by its comma-separated label set."""
    return task["instruction"].replace("{labels}", ", ".join(labels or []))


def instruction(names: list[str], tasks: dict[str, Any], labels: dict[str, list[str]]) -> str:
    """The user instruction of a record answering `names` (one task: its own instruction;
    several: one `name: instruction` line each, the shape of the answer)."""
    if len(names) == 1:
        return task_instruction(tasks[names[0]], labels.get(names[0]))
    return "\n".join(f"{n}: {task_instruction(tasks[n], labels.get(n))}" for n in names)


def one_line(text: str) -> str:
    """`text` on one line: backslash, line feed and carriage return escaped (one_line_read
    undoes it exactly)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def one_line_read(text: str) -> str:
    """The text one_line escaped; a backslash before anything else stays as it is."""
    return re.sub(r"\\([\\nr])", lambda m: {"\\": "\\", "n": "\n", "r": "\r"}[m[1]], text)


def answer_text(answers: dict[str, str]) -> str:
    """The assistant's answer: the bare answer for one task, `name: answer` lines for more
    (each answer on its one line, one_line)."""
    if len(answers) == 1:
        return next(iter(answers.values()))
    return "\n".join(f"{name}: {one_line(value)}" for name, value in answers.items())


def record(
    ticket_id: str,
    text: str,
    answers: dict[str, str],
    tasks: dict[str, Any],
    labels: dict[str, list[str]],
    system: str,
) -> dict[str, Any]:
    """One alpaca record answering the tasks in `answers` (gold answers; empty for a request)."""
    names = list(answers)
    return {
        "id": ticket_id,
        "tasks": names,
        "answers": answers,
        "system": system,
        "instruction": instruction(names, tasks, labels),
        "input": text,
        "output": answer_text(answers),
    }


def records_for_ticket(
    ticket_id: str,
    text: str,
    answers: dict[str, str],
    tasks: dict[str, Any],
    labels: dict[str, list[str]],
    system: str,
    layout: str,
) -> list[dict[str, Any]]:
    """The records of one ticket in the given layout (`ticket`: one, `task`: one per task)."""
    if layout == "ticket":
        return [record(ticket_id, text, answers, tasks, labels, system)]
    return [
        record(ticket_id, text, {name: value}, tasks, labels, system)
        for name, value in answers.items()
    ]


def user_content(rec: dict[str, Any]) -> str:
    """The user turn as LlamaFactory's alpaca converter builds it: the non-empty parts of
    instruction and input joined by a newline."""
    return "\n".join(part for part in (rec["instruction"], rec.get("input")) if part)


def messages(rec: dict[str, Any]) -> list[dict[str, str]]:
    """System prompt (if any; else the chat template's default, as in training) + user turn."""
    turns = [{"role": "system", "content": rec["system"]}] if rec.get("system") else []
    return [*turns, {"role": "user", "content": user_content(rec)}]


def label_max_tokens(labels: list[str]) -> int:
    """Enough tokens for any label however the model spells it, plus end-of-sequence.

    Structured outputs accept any token sequence that spells a label, and a model may spell
    one in more tokens than its tokenizer would (a random model spells `account_access` in 8
    tokens, not 3); every token spells at least one byte, so the longest label's byte length
    is a safe bound. A trained model stops after the label's own few tokens anyway.
    """
    return max(len(label.encode("utf-8")) for label in labels) + 1


def constraint(
    names: list[str], labels: dict[str, list[str]], max_tokens: int | dict[str, int]
) -> tuple[dict[str, Any] | None, int]:
    """vLLM `structured_outputs` and `max_tokens` for a record answering `names`.

    One classification task: the label set as a choice. One generation task: free text, up
    to its budget (`max_tokens`: one number for every generation task, or one per task).
    Several: a regular expression of the whole answer, a label set per classification line
    and one line of free text per generation line; the budget is the sum of theirs.
    """
    budgets = max_tokens if isinstance(max_tokens, dict) else dict.fromkeys(names, max_tokens)
    if len(names) == 1:
        name = names[0]
        if name in labels:
            return {"choice": labels[name]}, label_max_tokens(labels[name])
        return None, budgets[name]
    parts, budget = [], 0
    for name in names:
        if name in labels:
            parts.append(f"{re.escape(name)}: (" + "|".join(map(re.escape, labels[name])) + ")")
            budget += label_max_tokens(labels[name])
        else:
            parts.append(f"{re.escape(name)}: [^\\n]+")
            budget += budgets[name]
        budget += len(name.encode("utf-8")) + 2  # "name: " and the line break, a byte a token
    return {"regex": "\n".join(parts)}, budget


def parse_answer(content: str | None, names: list[str]) -> dict[str, str | None]:
    """The answer of each task from a model's reply (None where it is missing)."""
    if content is None:
        return dict.fromkeys(names)
    if len(names) == 1:
        return {names[0]: content.strip()}
    found: dict[str, str | None] = dict.fromkeys(names)
    for line in content.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in found and found[name.strip()] is None:
            found[name.strip()] = one_line_read(value.strip())
    return found


def training_chat_template(tokenizer_dir: str | Path, template: str, default_system: str) -> str:
    """LlamaFactory's rendering of its training `template` as a Jinja chat template, with
    `default_system` as the default system prompt: what the merged model's tokenizer gets,
    and what vLLM is given (`--chat-template`) when it serves the adapter on the base
    model, whose own template may differ (another default system prompt, for one)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data_args = DataArguments(template=template, default_system=default_system)
    return get_template_and_fix_tokenizer(tokenizer, data_args)._get_jinja_template(tokenizer)
