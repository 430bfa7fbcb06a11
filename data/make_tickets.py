"""Generate the synthetic customer-support ticket dataset (data/raw/tickets.csv).

Why it exists: the pipeline fine-tunes a small LLM to triage support tickets (category,
priority, one-line summary), and we need labelled tickets that look like a real helpdesk queue
without shipping customer data. This script writes them from templates, slot fillers and
noise (typos, vague subjects, two-topic and ambiguous tickets, priority label noise), so that
a TF-IDF baseline lands well below perfect and the fine-tuned model has something to learn.

The templates are data, in data/templates/*.yaml (another folder: TICKET_TEMPLATES=DIR):
categories.yaml (shares, dispatcher mistakes), intents.yaml (per category: priority weights,
subjects, (body, summary) cases), ambiguous.yaml, asides.yaml (two-topic tickets), cues.yaml
(deadlines, priority cues, angry caps), framing.yaml (vague subjects, greetings, background,
closings, sign-offs) and slots.yaml (catalogue, names, ...). Each table `foo` there is the
constant FOO here, checked when the module loads (TemplateError names the file and the key).
The difficulty knobs (*_RATE) and the formats of numbers and dates stay in this file.

Run (these are the defaults, so a bare call rewrites the committed file):

    python data/make_tickets.py --seed 42 --n 2400 --out data/raw/tickets.csv

Determinism: all randomness from one `random.Random(seed)`, the templates in file order (YAML
lists and mappings keep it), no set/hash order, `csv.writer` with "\\n" line endings and UTF-8,
so the same templates, seed and n give the same bytes. A template edit changes the tickets:
regenerate data/raw/tickets.csv and commit both. Needs PyYAML (requirements/pipeline.txt).
Columns: id, subject, body, category, priority, summary, template. `template` names the
(body, summary) case a ticket was made from (`billing/0/2`: category, intent and case by
position; `ambiguous/1/0` for the ambiguous pools), so `prepare.group_column: template`
can test on cases never trained on instead of on new fillings of seen ones.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import random
import re
import string
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import yaml

LEVELS = ("low", "medium", "high", "urgent")
DEFAULT_OUT = Path(__file__).resolve().parent / "raw" / "tickets.csv"
TEMPLATES = Path(
    os.environ.get("TICKET_TEMPLATES") or Path(__file__).resolve().parent / "templates"
)

# Difficulty knobs (tuned so the TF-IDF + logistic regression baseline scores ~0.8 macro-F1).
AMBIGUOUS_RATE = 0.36  # ticket drawn from a pool shared by two or three categories
TWO_TOPIC_RATE = 0.15  # of non-short tickets: also mentions a second topic (~13% overall)
VAGUE_SUBJECT_RATE = 0.18  # "Help please", "(no subject)", ...
CATEGORY_NOISE = 0.035  # human triage mistake: filed under a neighbouring category
DEADLINE_RATE = 0.12  # "by Friday", "before our launch tomorrow": priority one level up
CUE_RATE = 0.5  # the text states the impact ("all users affected", "no rush")
PRIORITY_NOISE = 0.08  # human triage disagreement: priority off by one level
SHORT_RATE = 0.15  # one-line body, no greeting or signature
LONG_RATE = 0.22  # several paragraphs with irrelevant context
TYPO_RATE = 0.30  # share of tickets with some misspelled words
LOWERCASE_RATE = 0.06
NO_PUNCT_RATE = 0.05
CAPS_RATE = 0.08  # an ALL CAPS angry sentence (not a priority cue)

# --- slot fillers: the values of {slot} placeholders ------------------------------------


def _money(rng: random.Random, s: Slots) -> str:
    return f"{s['currency']}{rng.randint(9, 899)}.{rng.choice(('00', '99', '50', '49', '95'))}"


def _date(rng: random.Random) -> str:
    form = rng.randrange(4)
    if form == 0:
        return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"
    if form == 1:
        return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}"
    if form == 2:
        return f"the {rng.choice(('3rd', '5th', '8th', '12th', '14th', '19th', '21st', '27th'))}"
    return rng.choice(("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"))


def _error(rng: random.Random) -> str:
    form = rng.randrange(5)
    if form == 0:
        return f"ERR-{rng.randint(100, 999)}"
    if form == 1:
        return f"error E{rng.randint(1000, 9999)}"
    if form == 2:
        return f"0x8007{rng.randint(0, 0xFFFF):04X}"
    if form == 3:
        return f"a {rng.choice((500, 502, 503, 504, 403))} error"
    return f"error code {rng.randint(10, 99)}"


def _other(pool: tuple[str, ...], taken: str, rng: random.Random) -> str:
    while (value := rng.choice(pool)) == taken:
        pass
    return value


def _email(rng: random.Random, s: Slots) -> str:
    first, last = s["name"].split(" ", 1)
    domain = rng.choice(("gmail.com", "outlook.com", "yahoo.com", "company"))
    if domain == "company":
        domain = s["company"].split()[0].lower().strip("&") + ".com"
    user = f"{first}.{last}" if rng.random() < 0.6 else f"{first[0]}{last}"
    return (user.replace("'", "") + "@" + domain).lower()


# Each slot is filled on first use, then reused, so subject, body and summary agree.
SLOT_MAKERS: dict[str, Callable[[random.Random, Slots], str]] = {
    "hw": lambda r, s: r.choice(HARDWARE),
    "hw2": lambda r, s: _other(HARDWARE, s["hw"], r),
    "plan": lambda r, s: r.choice(PLANS),
    "app": lambda r, s: r.choice(APPS),
    "web": lambda r, s: r.choice(WEB_APPS),
    "client": lambda r, s: r.choice(CLIENT_APPS),
    "feature": lambda r, s: r.choice(FEATURES),
    "order": lambda r, s: f"#{r.choice('ABCK')}{r.randint(10000, 99999)}",
    "order2": lambda r, s: f"#{r.choice('ABCK')}{r.randint(10000, 99999)}",
    "invoice": lambda r, s: f"INV-{r.choice((2023, 2024))}-{r.randint(1, 99999):05d}",
    "currency": lambda r, s: r.choices("$€£", weights=(6, 2, 2))[0],
    "amount": _money,
    "amount2": _money,
    "date": lambda r, s: _date(r),
    "month": lambda r, s: r.choice(MONTHS),
    "browser": lambda r, s: r.choice(BROWSERS),
    "os": lambda r, s: r.choice(SYSTEMS),
    "error": lambda r, s: _error(r),
    "name": lambda r, s: f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}",
    "name2": lambda r, s: _other(FIRST_NAMES, s["name"].split()[0], r),
    "name3": lambda r, s: _other(FIRST_NAMES, s["name2"], r),
    "company": lambda r, s: r.choice(COMPANIES),
    "email": _email,
    "n_users": lambda r, s: str(r.choice((4, 6, 12, 15, 25, 40, 60, 120, 250))),
    "days": lambda r, s: str(r.randint(3, 16)),
    "last4": lambda r, s: f"{r.randint(0, 9999):04d}",
    "city": lambda r, s: r.choice(CITIES),
    "carrier": lambda r, s: r.choice(CARRIERS),
    "tracking": lambda r, s: "1Z" + "".join(r.choice("0123456789ABCDEFX") for _ in range(12)),
    "time": lambda r, s: r.choice(TIMES),
    "version": lambda r, s: f"{r.randint(3, 6)}.{r.randint(0, 12)}.{r.randint(0, 9)}",
    "years": lambda r, s: str(r.randint(2, 9)),
    "agent": lambda r, s: r.choice(AGENTS),
}


class Slots(dict[str, str]):
    """Lazily filled template values for one ticket (used with str.format_map)."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    def __missing__(self, key: str) -> str:
        value = SLOT_MAKERS[key](self.rng, self)
        self[key] = value
        return value


# --- templates: data/templates/*.yaml ---------------------------------------------------


class Intent(NamedTuple):
    """One reason to write in. Subjects fit every case; each case pairs a body with its summary."""

    prio: tuple[float, float, float, float]  # weights of low, medium, high, urgent
    subjects: tuple[str, ...]
    cases: tuple[tuple[str, str], ...]  # (body template, summary template)
    labels: tuple[str, ...] = ()  # ambiguous pools only: categories it may be filed under


class TemplateError(ValueError):
    """A template file is missing or not YAML, or one of its tables is malformed."""


# Each file's tables; the table `foo` becomes the module constant FOO.
FILES: dict[str, tuple[str, ...]] = {
    "categories.yaml": ("category_weights", "neighbours"),
    "intents.yaml": ("intents",),
    "ambiguous.yaml": ("ambiguous",),
    "asides.yaml": ("asides", "aside_summary"),
    "cues.yaml": ("deadlines", "cues", "angry", "caps_categories"),
    "framing.yaml": (
        "vague_subjects",
        "greetings",
        "context",
        "troubleshooting",
        "troubleshoot_categories",
        "closings",
        "signoffs",
        "signature_titles",
    ),
    "slots.yaml": (
        *("hardware", "plans", "web_apps", "client_apps", "features", "first_names"),
        *("last_names", "companies", "cities", "browsers", "systems", "carriers", "months"),
        *("agents", "times"),
    ),
}
# Tables whose entries are written as they are, never formatted: no {slots} in them.
VERBATIM = {"angry", "closings", "signoffs", "signature_titles"} | set(FILES["slots.yaml"])


def _text(value: Any, where: str, formatted: bool = True) -> str:
    """A string; if it is formatted, its {placeholders} must be slots."""
    if not isinstance(value, str):
        raise TemplateError(f"{where}: expected a string, got {value!r:.60} (quote it)")
    if formatted:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as error:
            raise TemplateError(f"{where}: {error} in {value!r}") from None
        for field in fields:
            if field not in SLOT_MAKERS:
                raise TemplateError(
                    f"{where}: unknown slot {{{field}}}; slots: {', '.join(SLOT_MAKERS)}"
                )
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise TemplateError(f"{where}: expected a non-empty list")
    return value


def _texts(value: Any, where: str, formatted: bool = True) -> tuple[str, ...]:
    return tuple(_text(v, f"{where}[{i}]", formatted) for i, v in enumerate(_list(value, where)))


def _names(value: Any, where: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Category (or level) names, each one of `allowed`."""
    names = _texts(value, where, formatted=False)
    for i, name in enumerate(names):
        if name not in allowed:
            raise TemplateError(f"{where}[{i}]: {name!r} is not one of {', '.join(allowed)}")
    return names


def _keyed(value: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A mapping with exactly `keys` (in any order)."""
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise TemplateError(f"{where}: expected a mapping of {', '.join(keys)}, got {kind}")
    missing = [key for key in keys if key not in value]
    unknown = [str(key) for key in value if key not in keys]
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise TemplateError(f"{where}: {'; '.join(problems)} (expected {', '.join(keys)})")
    return value


def _weight(value: Any, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TemplateError(f"{where}: expected a number >= 0, got {value!r}")
    return value


def _intents(value: Any, where: str, categories: tuple[str, ...] | None) -> tuple[Intent, ...]:
    """Intents; `categories` given: an ambiguous pool, each intent with its labels."""
    intents = []
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        fields = ("priority", "subjects", "cases") + (("labels",) if categories else ())
        item = _keyed(item, at, fields)
        prio = _keyed(item["priority"], f"{at}.priority", LEVELS)
        weights = tuple(_weight(prio[level], f"{at}.priority.{level}") for level in LEVELS)
        if not sum(weights) > 0:
            raise TemplateError(f"{at}.priority: expected a weight above 0")
        cases = []
        for j, case in enumerate(_list(item["cases"], f"{at}.cases")):
            case = _keyed(case, f"{at}.cases[{j}]", ("body", "summary"))
            body = _text(case["body"], f"{at}.cases[{j}].body")
            cases.append((body, _text(case["summary"], f"{at}.cases[{j}].summary")))
        subjects = _texts(item["subjects"], f"{at}.subjects")
        labels = _names(item["labels"], f"{at}.labels", categories) if categories else ()
        intents.append(Intent(weights, subjects, tuple(cases), labels))
    return tuple(intents)


def load_templates(folder: Path = TEMPLATES) -> dict[str, Any]:
    """The checked template tables in `folder`, by constant name (YAML lists become tuples)."""
    raw, where = {}, {}
    for name, tables in FILES.items():
        path = folder / name
        try:
            with path.open(encoding="utf-8") as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as error:
            raise TemplateError(f"{path}: cannot load: {error}") from None
        doc = _keyed(doc, str(path), tables)
        raw |= doc
        where |= {table: f"{path}: {table}" for table in tables}

    t: dict[str, Any] = {}
    weights = raw["category_weights"]
    if not isinstance(weights, dict) or not weights:
        raise TemplateError(f"{where['category_weights']}: expected category: weight")
    for category, weight in weights.items():
        if not isinstance(category, str) or type(weight) is not int or weight < 1:
            at = f"{where['category_weights']}.{category}"
            raise TemplateError(f"{at}: expected a whole number >= 1, got {weight!r}")
    categories = tuple(weights)
    t["CATEGORY_WEIGHTS"] = weights
    for table in ("neighbours", "asides", "aside_summary", "intents"):
        _keyed(raw[table], where[table], categories)
    t["NEIGHBOURS"] = {
        c: _names(v, f"{where['neighbours']}.{c}", categories) for c, v in raw["neighbours"].items()
    }
    t["INTENTS"] = {
        c: _intents(v, f"{where['intents']}.{c}", None) for c, v in raw["intents"].items()
    }
    t["AMBIGUOUS"] = _intents(raw["ambiguous"], where["ambiguous"], categories)
    t["ASIDES"] = {c: _texts(v, f"{where['asides']}.{c}") for c, v in raw["asides"].items()}
    t["ASIDE_SUMMARY"] = {
        c: _text(v, f"{where['aside_summary']}.{c}", formatted=False)
        for c, v in raw["aside_summary"].items()
    }
    cues = _keyed(raw["cues"], where["cues"], LEVELS)
    t["CUES"] = tuple(_texts(cues[level], f"{where['cues']}.{level}") for level in LEVELS)
    for table in ("caps_categories", "troubleshoot_categories"):
        t[table.upper()] = _names(raw[table], where[table], categories)
    for table, value in raw.items():  # the rest: lists of sentences or of words
        if table.upper() not in t:
            t[table.upper()] = _texts(value, where[table], formatted=table not in VERBATIM)
    return t


try:
    _T = load_templates()
except TemplateError as _error:
    if __name__ == "__main__":
        sys.exit(f"{Path(__file__).name}: {_error}")
    raise

CATEGORY_WEIGHTS: dict[str, int] = _T["CATEGORY_WEIGHTS"]  # share of the queue
NEIGHBOURS: dict[str, tuple[str, ...]] = _T["NEIGHBOURS"]  # a dispatcher's plausible mistakes
INTENTS: dict[str, tuple[Intent, ...]] = _T["INTENTS"]
AMBIGUOUS: tuple[Intent, ...] = _T["AMBIGUOUS"]  # filed under any of an intent's labels
ASIDES: dict[str, tuple[str, ...]] = _T["ASIDES"]  # second topic's sentence, by category
ASIDE_SUMMARY: dict[str, str] = _T["ASIDE_SUMMARY"]
TOPICS = sorted(ASIDES)
DEADLINES: tuple[str, ...] = _T["DEADLINES"]
CUES: tuple[tuple[str, ...], ...] = _T["CUES"]  # by priority level (low .. urgent)
ANGRY: tuple[str, ...] = _T["ANGRY"]
CAPS_CATEGORIES: tuple[str, ...] = _T["CAPS_CATEGORIES"]
VAGUE_SUBJECTS: tuple[str, ...] = _T["VAGUE_SUBJECTS"]
GREETINGS: tuple[str, ...] = _T["GREETINGS"]
CONTEXT: tuple[str, ...] = _T["CONTEXT"]
TROUBLESHOOTING: tuple[str, ...] = _T["TROUBLESHOOTING"]
TROUBLESHOOT_CATEGORIES: tuple[str, ...] = _T["TROUBLESHOOT_CATEGORIES"]
CLOSINGS: tuple[str, ...] = _T["CLOSINGS"]
SIGNOFFS: tuple[str, ...] = _T["SIGNOFFS"]
SIGNATURE_TITLES: tuple[str, ...] = _T["SIGNATURE_TITLES"]
HARDWARE: tuple[str, ...] = _T["HARDWARE"]
PLANS: tuple[str, ...] = _T["PLANS"]
WEB_APPS: tuple[str, ...] = _T["WEB_APPS"]
CLIENT_APPS: tuple[str, ...] = _T["CLIENT_APPS"]
APPS = WEB_APPS + CLIENT_APPS
FEATURES: tuple[str, ...] = _T["FEATURES"]
FIRST_NAMES: tuple[str, ...] = _T["FIRST_NAMES"]
LAST_NAMES: tuple[str, ...] = _T["LAST_NAMES"]
COMPANIES: tuple[str, ...] = _T["COMPANIES"]
CITIES: tuple[str, ...] = _T["CITIES"]
BROWSERS: tuple[str, ...] = _T["BROWSERS"]
SYSTEMS: tuple[str, ...] = _T["SYSTEMS"]
CARRIERS: tuple[str, ...] = _T["CARRIERS"]
MONTHS: tuple[str, ...] = _T["MONTHS"]
AGENTS: tuple[str, ...] = _T["AGENTS"]
TIMES: tuple[str, ...] = _T["TIMES"]


# --- assembly ---------------------------------------------------------------------------


def category_plan(n: int, rng: random.Random) -> list[str]:
    """Exact per-category counts (largest remainder), in shuffled order."""
    total = sum(CATEGORY_WEIGHTS.values())
    quotas = {c: n * w / total for c, w in CATEGORY_WEIGHTS.items()}
    counts = {c: int(q) for c, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda c: (counts[c] - quotas[c], c))
    for c in by_remainder[: n - sum(counts.values())]:
        counts[c] += 1
    plan = [c for c in CATEGORY_WEIGHTS for _ in range(counts[c])]
    rng.shuffle(plan)
    return plan


def add_typos(text: str, rng: random.Random, rate: float) -> str:
    """Swap, drop or double a letter in some longer plain words."""
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) < 4 or not word.isalpha() or rng.random() >= rate:
            continue
        j = rng.randrange(1, len(word) - 1)
        op = rng.randrange(3)
        if op == 0:
            word = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
        elif op == 1:
            word = word[:j] + word[j + 1 :]
        else:
            word = word[:j] + word[j] + word[j:]
        words[i] = word
    return " ".join(words)


def signature(s: Slots, rng: random.Random) -> str:
    first = s["name"].split(" ", 1)[0]
    form = rng.randrange(5)
    if form == 0:
        return first
    if form == 1:
        return s["name"]
    if form == 2:
        title = rng.choice(SIGNATURE_TITLES)
        return f"{s['name']}\n{title}, {s['company']}"
    if form == 3:
        return f"{s['name']} | {s['company']}"
    return first[0]


def make_ticket(category: str, rng: random.Random) -> tuple[str, str, str, str, str, str]:
    """Return (subject, body, category, priority, summary, template) for a ticket of `category`."""
    ambiguous = [it for it in AMBIGUOUS if category in it.labels]
    if ambiguous and rng.random() < AMBIGUOUS_RATE:
        intent = rng.choice(ambiguous)
        family = f"ambiguous/{AMBIGUOUS.index(intent)}"
    else:
        intent = rng.choice(INTENTS[category])
        family = f"{category}/{INTENTS[category].index(intent)}"
    s = Slots(rng)
    level = rng.choices(range(4), weights=intent.prio)[0]

    vague = rng.random() < VAGUE_SUBJECT_RATE
    subject = rng.choice(VAGUE_SUBJECTS if vague else intent.subjects).format_map(s)
    body_tpl, summary_tpl = rng.choice(intent.cases)
    template = f"{family}/{intent.cases.index((body_tpl, summary_tpl))}"
    core = body_tpl.format_map(s)
    summary = summary_tpl.format_map(s)

    style = rng.random()
    short = style < SHORT_RATE
    long = style > 1 - LONG_RATE
    sentences = [core]
    if not short and rng.random() < TWO_TOPIC_RATE:
        topics = [c for c in TOPICS if c != category]
        other = rng.choices(topics, weights=[CATEGORY_WEIGHTS[c] for c in topics])[0]
        sentences.append(rng.choice(ASIDES[other]).format_map(s))
        if len(f"{summary} {ASIDE_SUMMARY[other]}".split()) <= 14:
            summary = f"{summary}; {ASIDE_SUMMARY[other]}"
    if not short and ((long and category in TROUBLESHOOT_CATEGORIES) or rng.random() < 0.05):
        sentences.append(rng.choice(TROUBLESHOOTING).format_map(s))

    # A hard deadline raises the level; otherwise the writer often says how bad it is.
    if rng.random() < DEADLINE_RATE:
        sentences.append(rng.choice(DEADLINES).format_map(s))
        level = min(level + 1, 3)
    elif rng.random() < CUE_RATE:
        sentences.append(rng.choice(CUES[level]).format_map(s))
    # The caps sentence is a distractor: angry is not the same as urgent.
    if level > 0 and category in CAPS_CATEGORIES and rng.random() < CAPS_RATE:
        sentences.insert(rng.randrange(len(sentences) + 1), rng.choice(ANGRY))
    if rng.random() < PRIORITY_NOISE:
        level = min(max(level + rng.choice((-1, 1)), 0), 3)

    paragraphs: list[str] = []
    if short:
        paragraphs.append(" ".join(sentences))
    else:
        if rng.random() < 0.75:
            paragraphs.append(rng.choice(GREETINGS).format_map(s))
        if long:  # background nobody asked for, sometimes two paragraphs of it
            context = [c.format_map(s) for c in rng.sample(CONTEXT, rng.randint(2, 5))]
            cut = rng.randint(1, len(context))
            paragraphs += [p for p in (" ".join(context[:cut]), " ".join(context[cut:])) if p]
        if len(sentences) > 2 and rng.random() < 0.5:
            paragraphs += [" ".join(sentences[:2]), " ".join(sentences[2:])]
        else:
            paragraphs.append(" ".join(sentences))
        if rng.random() < 0.5:
            paragraphs.append(rng.choice(CLOSINGS))
        signoff = rng.choice(SIGNOFFS)
        if rng.random() < 0.8:
            signoff = f"{signoff}\n{signature(s, rng)}".strip()
        if signoff:
            paragraphs.append(signoff)
    if rng.random() < 0.07:
        paragraphs.append("Sent from my iPhone")
    body = "\n\n".join(paragraphs)

    if rng.random() < TYPO_RATE:
        body = add_typos(body, rng, rate=rng.choice((0.03, 0.06, 0.1)))
    if rng.random() < LOWERCASE_RATE:
        subject, body = subject.lower(), body.lower()
    if rng.random() < NO_PUNCT_RATE:
        body = re.sub(r"[.,?!](?=\s|$)", "", body)  # keeps "$12.50" and "4.2.1" intact

    label = category
    if rng.random() < CATEGORY_NOISE:
        label = rng.choice(NEIGHBOURS[category])
    return subject, body, label, LEVELS[level], summary, template


def generate(n: int, seed: int) -> list[list[str]]:
    """All rows (header first); bodies, hence (subject, body) pairs, are unique."""
    rng = random.Random(seed)
    rows = [["id", "subject", "body", "category", "priority", "summary", "template"]]
    seen: set[str] = set()  # bodies so far (membership only, never iterated)
    for i, category in enumerate(category_plan(n, rng), start=1):
        for _ in range(1000):  # an exact repeat would leak across train/test splits
            ticket = make_ticket(category, rng)
            if ticket[1] not in seen:
                break
        else:
            raise RuntimeError(f"cannot make {n} distinct tickets; lower --n")
        seen.add(ticket[1])
        rows.append([f"TCK-{i:06d}", *ticket])
    return rows


def write_csv(rows: list[list[str]], out: Path) -> None:
    """Write atomically: temporary file in the same folder, then os.replace."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--n", type=int, default=2400, help="number of tickets (default 2400)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output CSV (default data/raw/tickets.csv)"
    )
    args = parser.parse_args()
    if args.n < len(CATEGORY_WEIGHTS):
        parser.error(f"--n must be at least {len(CATEGORY_WEIGHTS)}")
    write_csv(generate(args.n, args.seed), args.out)
    print(f"wrote {args.n} tickets to {args.out}")


if __name__ == "__main__":
    main()
