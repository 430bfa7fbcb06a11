"""Generate the synthetic customer-support ticket dataset (data/raw/tickets.csv).

Why it exists: the pipeline fine-tunes a small LLM to triage support tickets (category,
priority, one-line summary), and we need labelled tickets that look like a real helpdesk queue
without shipping customer data. This script writes them from templates, slot fillers and
noise (typos, vague subjects, two-topic and ambiguous tickets, priority label noise), so that
a TF-IDF baseline lands well below perfect and the fine-tuned model has something to learn.

Run (these are the defaults, so a bare call rewrites the committed file):

    python data/make_tickets.py --seed 42 --n 2400 --out data/raw/tickets.csv

Determinism: stdlib only, all randomness from one `random.Random(seed)`, no set/hash order,
`csv.writer` with "\\n" line endings and UTF-8, so the same seed and n give the same bytes.
Columns: id, subject, body, category, priority, summary.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

LEVELS = ("low", "medium", "high", "urgent")
DEFAULT_OUT = Path(__file__).resolve().parent / "raw" / "tickets.csv"

# Share of the queue per category (normalised; exact counts by largest remainder).
CATEGORY_WEIGHTS: dict[str, int] = {
    "billing": 22,
    "technical_issue": 20,
    "account_access": 14,
    "shipping": 12,
    "refund": 10,
    "product_question": 8,
    "bug_report": 6,
    "feature_request": 4,
    "cancellation": 3,
    "security": 3,
}

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

# Plausible mistakes of a human dispatcher (used with CATEGORY_NOISE).
NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "billing": ("refund", "cancellation"),
    "technical_issue": ("bug_report", "account_access"),
    "account_access": ("security", "technical_issue"),
    "shipping": ("refund",),
    "refund": ("billing", "shipping"),
    "product_question": ("feature_request", "technical_issue"),
    "bug_report": ("technical_issue",),
    "feature_request": ("product_question",),
    "cancellation": ("billing", "refund"),
    "security": ("account_access",),
}

# --- the company's catalogue and other slot fillers -------------------------------------

HARDWARE = (
    "Nimbus Router X2",
    "Nimbus Router X1 Lite",
    "Nimbus Mesh Node M3",
    "Pulse Smart Hub",
    "Nimbus Cam 360",
    "AeroDock USB-C Station",
    "Beacon Wi-Fi Extender",
    "Pulse Thermostat T4",
    "Nimbus NAS Duo",
    "Pulse Doorbell Mini",
)
PLANS = (
    "CloudDesk Pro plan",
    "CloudDesk Starter plan",
    "CloudDesk Business plan",
    "Nimbus Backup 2TB",
    "Nimbus Secure VPN",
    "Team Vault Enterprise",
)
WEB_APPS = ("CloudDesk web dashboard", "admin console", "Team Vault web app", "CloudDesk portal")
CLIENT_APPS = (
    "Nimbus desktop client",
    "Nimbus Sync agent",
    "Pulse mobile app",
    "CloudDesk Android app",
    "Pulse iOS app",
    "Nimbus VPN client",
)
APPS = WEB_APPS + CLIENT_APPS
FEATURES = (
    "dark mode",
    "SSO with Okta",
    "bulk CSV export",
    "hardware security keys",
    "shared folders",
    "a Slack integration",
    "scheduled reports",
    "offline mode",
    "custom domains",
    "audit log export",
    "multi-currency invoices",
    "role-based permissions",
    "webhooks",
    "calendar sync",
    "guest Wi-Fi schedules",
    "per-device bandwidth limits",
)
FIRST_NAMES = (
    "James",
    "Maria",
    "Wei",
    "Aisha",
    "Tom",
    "Sofia",
    "Raj",
    "Emma",
    "Lukas",
    "Chloe",
    "Diego",
    "Hannah",
    "Kwame",
    "Yuki",
    "Olivia",
    "Ahmed",
    "Grace",
    "Pieter",
    "Nina",
    "Sam",
    "Fatima",
    "Ben",
    "Laura",
    "Ivan",
    "Priya",
    "Mark",
    "Zoe",
    "Carlos",
    "Anna",
    "Greg",
)
LAST_NAMES = (
    "Smith",
    "Garcia",
    "Chen",
    "Khan",
    "Müller",
    "Rossi",
    "Patel",
    "Johnson",
    "Novak",
    "Dubois",
    "Okafor",
    "Tanaka",
    "Brown",
    "Silva",
    "O'Neill",
    "Jansen",
    "Kowalski",
    "Haddad",
    "Lee",
    "Andersson",
    "Murphy",
    "Nguyen",
    "Fischer",
    "Lopez",
    "Wright",
)
COMPANIES = (
    "Brightline Dental",
    "Oakridge Logistics",
    "Kestrel Design Studio",
    "Northwind Traders",
    "Harbor & Finch LLP",
    "Bluefern Bakery",
    "Quanta Analytics",
    "Meridian Property Group",
    "Tallis Architects",
    "Riverbend Veterinary",
    "Copperleaf Media",
    "Summit Physio",
)
CITIES = ("Lagos", "São Paulo", "Bucharest", "Jakarta", "Minsk", "Hanoi", "Dallas", "Manila")
BROWSERS = ("Chrome", "Chrome 126", "Firefox", "Safari", "Safari 17", "Edge", "Brave")
SYSTEMS = ("Windows 11", "Windows 10", "macOS Sonoma", "macOS Ventura", "Ubuntu 22.04", "ChromeOS")
CARRIERS = ("UPS", "FedEx", "DHL", "USPS", "Royal Mail", "DPD")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
AGENTS = ("Sam", "Priya", "Jordan", "Alex", "Maya", "Chris")


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
    "time": lambda r, s: r.choice(("8am", "9:15 this morning", "about 2pm", "last night", "noon")),
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


# --- intents: generic subjects, (body, summary) cases, priority weights -----------------


class Intent(NamedTuple):
    """One reason to write in. Subjects fit every case; each case pairs a body with its summary."""

    prio: tuple[float, float, float, float]  # weights of low, medium, high, urgent
    subjects: tuple[str, ...]
    cases: tuple[tuple[str, str], ...]  # (body template, summary template)
    labels: tuple[str, ...] = ()  # ambiguous pools only: categories it may be filed under


INTENTS: dict[str, tuple[Intent, ...]] = {
    "billing": (
        Intent(
            (0, 0.25, 0.6, 0.15),
            (
                "Charged twice",
                "Double charge on my card",
                "Duplicate payment {amount}",
                "why was i billed two times??",
                "Two identical charges of {amount}",
            ),
            (
                (
                    (
                        "I was charged {amount} twice on {date} for the {plan}. My bank statement shows two"
                        " identical transactions. Please reverse the duplicate."
                    ),
                    "Customer double-charged {amount} for {plan}, wants duplicate reversed",
                ),
                (
                    (
                        "Looks like you took {amount} from my card ending {last4} two times for invoice"
                        " {invoice}. Can you take one of them back off?"
                    ),
                    "Invoice {invoice} paid twice ({amount}); asks to void second payment",
                ),
                (
                    (
                        "There are two payments of {amount} for {month} on our company card. We only have"
                        " one subscription with you, so one of these is wrong."
                    ),
                    "Two {amount} payments for {month} on one subscription",
                ),
                (
                    (
                        "my statement shows the {plan} renewal went through twice yesterday. Same amount"
                        " ({amount}), same minute."
                    ),
                    "{plan} renewal of {amount} processed twice yesterday",
                ),
            ),
        ),
        Intent(
            (0, 0.4, 0.5, 0.1),
            (
                "Payment declined",
                "Card keeps getting rejected",
                "Can't pay",
                "Payment failing",
                "Problem paying for {plan}",
                "Payment not going through",
            ),
            (
                (
                    (
                        "My payment for the {plan} keeps getting declined even though the card is valid. I"
                        " tried twice today and got {error}."
                    ),
                    "Card payment for {plan} declined twice with {error}",
                ),
                (
                    (
                        "The checkout page rejects my card ending {last4}. My bank says nothing is blocked on"
                        " their side."
                    ),
                    "Checkout rejects card ending {last4}; bank reports no block",
                ),
                (
                    (
                        "Our auto-renewal failed and now there's a banner saying the account will be"
                        " suspended in {days} days. We have paid every month without problems."
                    ),
                    "Auto-renewal payment failed; suspension warning in {days} days",
                ),
                (
                    (
                        "Trying to pay invoice {invoice} ({amount}) online but the payment form just spins"
                        " and then says the transaction could not be completed."
                    ),
                    "Online payment of invoice {invoice} fails at checkout",
                ),
            ),
        ),
        Intent(
            (0.35, 0.55, 0.1, 0),
            (
                "Invoice question",
                "Question about my bill",
                "Query regarding charges",
                "need clarification on invoice",
                "Accounts query",
                "Invoice {invoice}",
            ),
            (
                (
                    (
                        "Can you send me a copy of invoice {invoice}? Our accounts team needs it with our"
                        " VAT number on it."
                    ),
                    "Needs copy of invoice {invoice} showing their VAT number",
                ),
                (
                    (
                        "The amount on invoice {invoice} is {amount} but our plan should be {amount2}. Can"
                        " you explain the difference?"
                    ),
                    "Invoice {invoice} shows {amount} instead of expected {amount2}",
                ),
                (
                    (
                        "I need to change the company name and address on our invoices to {company}. Where"
                        " do I do that?"
                    ),
                    "Wants future invoices issued to {company} with new address",
                ),
                (
                    (
                        "Why did my monthly price go up from {amount2} to {amount}? I didn't get any notice"
                        " about a price change."
                    ),
                    "Asks why monthly price rose from {amount2} to {amount}",
                ),
                (
                    (
                        "There's a charge of {amount} from Nimbus on {date} and I have no idea what it is"
                        " for. Which product does it belong to?"
                    ),
                    "Unrecognised {amount} charge on {date}, asks which product",
                ),
            ),
        ),
        Intent(
            (0.45, 0.45, 0.1, 0),
            (
                "Update payment details",
                "Change payment method",
                "new credit card",
                "Payment options",
            ),
            (
                (
                    (
                        "How do I switch our payment from credit card to bank transfer? Finance prefers"
                        " invoices with net 30 terms."
                    ),
                    "Asks to move from card payments to bank transfer, net 30",
                ),
                (
                    "I need to replace the card on file, the old one ending {last4} expires this month.",
                    "Wants to replace expiring card ending {last4} on file",
                ),
                (
                    "Can we pay annually instead of monthly for the {plan}? And would that be cheaper?",
                    "Asks about annual payment option and discount for {plan}",
                ),
            ),
        ),
    ),
    "technical_issue": (
        Intent(
            (0, 0.05, 0.4, 0.55),
            (
                "{web} DOWN",
                "Service outage?",
                "Nothing loads",
                "Production down!!",
                "Is {web} down for everyone?",
                "Can't access anything",
            ),
            (
                (
                    (
                        "The {web} has been down since {time}. None of our {n_users} users can load"
                        " anything, just a spinning wheel."
                    ),
                    "{web} unavailable since {time}, all {n_users} users blocked",
                ),
                (
                    "We get {error} on every request to the {web}. Production is down for us right now.",
                    "Every {web} request returns {error}; production down",
                ),
                (
                    "Nothing is syncing. {web} shows 'service unavailable' for everyone in the office.",
                    "Office-wide outage: {web} shows service unavailable",
                ),
                (
                    (
                        "Is there an outage? {web} times out for all of us since {time}, status page says"
                        " everything is green."
                    ),
                    "{web} timing out for whole team; status page shows green",
                ),
            ),
        ),
        Intent(
            (0.15, 0.5, 0.35, 0),
            (
                "{hw} keeps disconnecting",
                "{hw} offline",
                "Wi-Fi problems",
                "connection issue",
                "{hw} not connecting",
                "no internet with {hw}",
            ),
            (
                (
                    (
                        "My {hw} keeps dropping the connection every few minutes. The light blinks orange and"
                        " then it comes back."
                    ),
                    "{hw} drops connection every few minutes, light blinks orange",
                ),
                (
                    (
                        "The {hw} won't connect to the internet after I moved it to another room. I've"
                        " rebooted it several times."
                    ),
                    "{hw} won't reconnect after being moved to another room",
                ),
                (
                    (
                        "Set up the {hw} yesterday, it shows up in the {app} but says 'offline' no matter"
                        " what I do."
                    ),
                    "New {hw} shows offline in {app} after setup",
                ),
                (
                    "Since {date} the {hw} loses Wi-Fi every evening around 7. Other devices are fine.",
                    "{hw} loses Wi-Fi every evening since {date}",
                ),
            ),
        ),
        Intent(
            (0.2, 0.55, 0.25, 0),
            (
                "Very slow",
                "Performance problems",
                "Everything is so slow",
                "Speed issue",
                "{web} sluggish",
            ),
            (
                (
                    (
                        "{web} has become extremely slow this week, pages take 20-30 seconds to load on"
                        " {browser}."
                    ),
                    "{web} pages take 20-30 seconds to load on {browser}",
                ),
                (
                    "Uploads to {plan} crawl at a few KB/s even though our connection is fine otherwise.",
                    "Uploads to {plan} extremely slow despite good connection",
                ),
                (
                    "Search in the {web} takes over a minute now. It used to be instant.",
                    "{web} search slowed from instant to over a minute",
                ),
            ),
        ),
        Intent(
            (0.3, 0.55, 0.15, 0),
            (
                "Install problem",
                "Setup not working",
                "{client} problem",
                "Can't get it working",
                "Help with setup",
                "{client} won't work on {os}",
            ),
            (
                (
                    (
                        "I can't get the {client} to install on {os}. The installer stops at 80% with"
                        " {error}."
                    ),
                    "{client} installer fails at 80% on {os} with {error}",
                ),
                (
                    (
                        "Files I save on my laptop are not showing up on my phone. The {client} says it's up"
                        " to date."
                    ),
                    "{client} not syncing files from laptop to phone",
                ),
                (
                    "The {hw} setup wizard in the {app} gets stuck on 'searching for device'.",
                    "{hw} setup in {app} stuck searching for device",
                ),
                (
                    "The {client} on {os} says 'not connected' even though the internet works.",
                    "{client} on {os} reports not connected despite working internet",
                ),
            ),
        ),
    ),
    "account_access": (
        Intent(
            (0, 0.45, 0.45, 0.1),
            (
                "Locked out",
                "Can't log in",
                "Password reset not working",
                "login problem",
                "Unable to sign in",
                "cant get in",
            ),
            (
                (
                    (
                        "I've been locked out of my account after too many login attempts. It says try"
                        " again later but that was hours ago."
                    ),
                    "User locked out after failed logins; lockout not clearing",
                ),
                (
                    (
                        "My password doesn't work anymore and the reset link in the email says it has"
                        " expired."
                    ),
                    "Password rejected and reset link expired; cannot log in",
                ),
                (
                    "I never receive the password reset email. Checked spam. My address is {email}.",
                    "Password reset emails not arriving at {email}",
                ),
                (
                    "Every time I log in to the {web} it sends me straight back to the login page.",
                    "{web} login loops back to sign-in page",
                ),
            ),
        ),
        Intent(
            (0, 0.5, 0.4, 0.1),
            (
                "Lost authenticator",
                "2FA code not arriving",
                "New phone, can't verify",
                "Verification code problem",
                "two-step login issue",
            ),
            (
                (
                    (
                        "I got a new phone and lost my authenticator app, now I can't get past the"
                        " verification code screen."
                    ),
                    "Lost authenticator with old phone; stuck at verification screen",
                ),
                (
                    "The 6-digit code by SMS never arrives so I can't sign in to the {app}.",
                    "SMS verification codes not arriving for {app} sign-in",
                ),
                (
                    "I changed my phone number and now the two-step codes go to my old number.",
                    "Two-step codes still sent to customer's old phone number",
                ),
            ),
        ),
        Intent(
            (0.35, 0.5, 0.15, 0),
            (
                "Account ownership",
                "Change login email",
                "Login details change",
                "User account help",
                "Sign-in method",
            ),
            (
                (
                    (
                        "Our admin {name2} left the company and we need to transfer ownership of the"
                        " workspace to me."
                    ),
                    "Admin {name2} left; requests workspace ownership transfer",
                ),
                (
                    (
                        "I want to change the email address I log in with from {email} to my new work"
                        " address."
                    ),
                    "Wants to change login email from {email} to work address",
                ),
                (
                    "Can't sign in with Google anymore, it says the account is not linked.",
                    "Google sign-in fails with 'account not linked' message",
                ),
                (
                    "I have two accounts by accident and want to merge them into {email}.",
                    "Customer wants duplicate accounts merged into {email}",
                ),
            ),
        ),
    ),
    "shipping": (
        Intent(
            (0.15, 0.55, 0.3, 0),
            (
                "Where is my order?",
                "Order {order} not arrived",
                "Delivery late",
                "Tracking not updating",
                "still waiting for my {hw}",
            ),
            (
                (
                    (
                        "My order {order} was supposed to arrive on {date} and it still hasn't shown up."
                        " Tracking hasn't updated in {days} days."
                    ),
                    "Order {order} overdue since {date}; tracking stale {days} days",
                ),
                (
                    "Where is my {hw}? Ordered over two weeks ago, order {order}.",
                    "{hw} order {order} not received after two weeks",
                ),
                (
                    (
                        "{carrier} tracking {tracking} for order {order} has said 'label created' since last"
                        " week."
                    ),
                    "Order {order}: {carrier} tracking stuck at label created",
                ),
                (
                    (
                        "The delivery estimate for {order} keeps moving back. First it was {date}, now it's"
                        " next week."
                    ),
                    "Delivery estimate for {order} keeps slipping from {date}",
                ),
            ),
        ),
        Intent(
            (0.2, 0.6, 0.2, 0),
            (
                "Change delivery address",
                "Delivery address for {order}",
                "Address correction",
                "Ship somewhere else",
            ),
            (
                (
                    (
                        "I entered the wrong street number on order {order}. Can you change the delivery"
                        " address before it ships?"
                    ),
                    "Needs street number corrected on order {order} before dispatch",
                ),
                (
                    "Can I have order {order} delivered to our office in {city} instead of my home?",
                    "Wants order {order} redirected to office in {city}",
                ),
                (
                    "We moved last week; please send order {order} to the new address on my profile.",
                    "Order {order} should go to customer's new address",
                ),
            ),
        ),
        Intent(
            (0.2, 0.5, 0.3, 0),
            (
                "Problem with my delivery",
                "Order {order} issue",
                "Parcel problem",
                "Incomplete order",
                "delivery issue",
            ),
            (
                (
                    "I ordered the {hw} but the box contained a {hw2}. Order {order}.",
                    "Received {hw2} instead of ordered {hw} (order {order})",
                ),
                (
                    "The package arrived but the power adapter is missing from the {hw} box.",
                    "{hw} delivered without its power adapter",
                ),
                (
                    (
                        "{carrier} says delivered but there is nothing at my door. Neighbours haven't seen"
                        " it either."
                    ),
                    "{carrier} marked parcel delivered but customer never got it",
                ),
                (
                    "Only one of the two {hw} units in order {order} was in the parcel.",
                    "Order {order} arrived with one of two {hw} units",
                ),
            ),
        ),
    ),
    "refund": (
        Intent(
            (0.3, 0.55, 0.15, 0),
            (
                "Return request",
                "Send back {hw}",
                "Want to return my order",
                "Returning {hw}",
            ),
            (
                (
                    (
                        "I'd like to return the {hw} I bought last month, it just isn't what we need. How do"
                        " I get my money back?"
                    ),
                    "Wants to return unneeded {hw} bought last month for money back",
                ),
                (
                    (
                        "The {hw} works fine but we ordered one too many. Can we send it back for a refund?"
                        " Order {order}."
                    ),
                    "Surplus {hw} from order {order}: return and reimburse",
                ),
                (
                    (
                        "Not happy with the {hw}, the range is much worse than advertised. I want to send it"
                        " back and be reimbursed."
                    ),
                    "Returning {hw} over poor range, asks for reimbursement",
                ),
            ),
        ),
        Intent(
            (0.15, 0.5, 0.35, 0),
            (
                "Money back please",
                "Charge by mistake",
                "30-day guarantee",
                "Reverse the {amount} charge",
                "want my money back",
            ),
            (
                (
                    (
                        "I upgraded to the {plan} by mistake and haven't used any of it. Please reverse the"
                        " {amount} payment."
                    ),
                    "Accidental {plan} upgrade; wants {amount} returned",
                ),
                (
                    (
                        "We were promised our money back within 30 days if the {plan} didn't work out. It"
                        " didn't. Please process it."
                    ),
                    "Claims 30-day money-back guarantee on {plan}",
                ),
                (
                    (
                        "My {plan} trial converted to paid ({amount}) without me noticing. I never used it,"
                        " can I get that back?"
                    ),
                    "Unused {plan} trial converted to {amount}, wants it reimbursed",
                ),
            ),
        ),
        Intent(
            (0.1, 0.5, 0.4, 0),
            (
                "Where is my refund?",
                "Refund not received",
                "Still waiting for reimbursement",
                "money back status",
                "Refund status",
            ),
            (
                (
                    (
                        "You confirmed my refund of {amount} on {date} but it is still not on my card. How"
                        " long does this take?"
                    ),
                    "Refund of {amount} confirmed {date}, not on card yet",
                ),
                (
                    "Still waiting for the money back for order {order}. It's been {days} days.",
                    "Money for order {order} not returned after {days} days",
                ),
                (
                    (
                        "The return label was used and {carrier} shows you received the package, but I have"
                        " had no reimbursement yet."
                    ),
                    "Return delivered via {carrier}, reimbursement still pending",
                ),
            ),
        ),
    ),
    "product_question": (
        Intent(
            (0.55, 0.4, 0.05, 0),
            (
                "Question about {hw}",
                "Pre-sales question",
                "Question before buying",
                "{hw} specs",
                "Compatibility?",
            ),
            (
                (
                    "Does the {hw} work with {os}? Thinking of buying two for our office.",
                    "Pre-sales: asks whether {hw} supports {os}",
                ),
                (
                    "Is the {hw} compatible with the {plan}, or do I need a different subscription?",
                    "Asks if {hw} works with {plan} subscription",
                ),
                (
                    "Can the {hw} be mounted on a wall, and does it come with screws?",
                    "Asks about wall mounting options for the {hw}",
                ),
                (
                    "What's the range of the {hw}? Our house is about 250 m2 over two floors.",
                    "Asks whether {hw} covers a two-floor house",
                ),
            ),
        ),
        Intent(
            (0.6, 0.35, 0.05, 0),
            (
                "How do I ...",
                "Quick question",
                "How to?",
                "question",
                "Usage question",
                "Help understanding {plan}",
            ),
            (
                (
                    "How do I share a folder with someone outside our organisation in the {web}?",
                    "How-to: sharing a folder externally in {web}",
                ),
                (
                    (
                        "What is the difference between the Starter and Business plans in terms of storage"
                        " and users?"
                    ),
                    "Asks storage and user limits of Starter versus Business plans",
                ),
                (
                    "Can I use one {plan} licence on both my laptop and my phone?",
                    "Asks whether one {plan} licence covers laptop and phone",
                ),
                (
                    (
                        "Is there a way to see who changed a file in the {web}? Just want to know where to"
                        " look."
                    ),
                    "Asks where {web} shows who changed a file",
                ),
            ),
        ),
    ),
    "bug_report": (
        Intent(
            (0.25, 0.55, 0.2, 0),
            (
                "Bug",
                "Found a bug in {app} {version}",
                "UI glitch",
                "Possible bug",
                "Something wrong in {version}",
            ),
            (
                (
                    (
                        "Steps to reproduce: open {web} on {browser}, go to Settings > Notifications, toggle"
                        " email alerts. Expected: saved. Actual: toggle flips back after refresh."
                    ),
                    "{web} notification toggle reverts after refresh on {browser}",
                ),
                (
                    (
                        "In version {version} the export button produces a CSV with all dates shifted by one"
                        " day."
                    ),
                    "Version {version} CSV export shifts every date by one day",
                ),
                (
                    "The date picker in the {app} shows February with 31 days.",
                    "{app} date picker shows 31 days in February",
                ),
                (
                    (
                        "Repro: sort the file list by size in {app} {version}. Folders end up in random"
                        " order. Happens every time."
                    ),
                    "{app} {version} puts folders in random order when sorting by size",
                ),
            ),
        ),
        Intent(
            (0, 0.45, 0.45, 0.1),
            (
                "Crash",
                "{client} crashes",
                "Reproducible crash",
                "Crash after update to {version}",
            ),
            (
                (
                    (
                        "{client} {version} crashes on launch on {os}. Started right after the update. Crash"
                        " log attached."
                    ),
                    "{client} {version} crashes on launch on {os} since update",
                ),
                (
                    (
                        "Reproducible crash: attach a file larger than 2 GB and the {client} closes without"
                        " a message."
                    ),
                    "{client} crashes silently when attaching files over 2 GB",
                ),
                (
                    (
                        "When I rename a file with an emoji in the name, the {client} throws {error} and the"
                        " file disappears from the list."
                    ),
                    "Renaming emoji filename in {client} gives {error}, hides file",
                ),
            ),
        ),
    ),
    "feature_request": (
        Intent(
            (0.6, 0.4, 0, 0),
            (
                "Feature suggestion",
                "Idea: {feature}",
                "Request: {feature}",
                "Please add {feature}",
                "Would love {feature}",
                "suggestion",
                "Wishlist",
            ),
            (
                (
                    "It would be great if the {app} had {feature}. We'd use it every day.",
                    "Asks for {feature} in {app}; would use daily",
                ),
                (
                    "Any plans to add {feature}? Our team has been asking for it for months.",
                    "Team has wanted {feature} for months; asks about plans",
                ),
                (
                    "Suggestion: let us set up {feature} per team instead of for the whole account.",
                    "Suggests making {feature} configurable per team",
                ),
                (
                    "Please consider adding {feature} to the {plan}. It's the one thing missing for us.",
                    "Wants {feature} added to {plan}",
                ),
                (
                    "Would love to see {feature} in the next release. Happy to beta test.",
                    "Requests {feature} in next release, offers to beta test",
                ),
                (
                    (
                        "Our competitor's tool has {feature} and it's the main reason my boss asks why we use"
                        " Nimbus. Please put it on the roadmap."
                    ),
                    "Competitor offers {feature}; customer asks for it on roadmap",
                ),
            ),
        ),
    ),
    "security": (
        Intent(
            (0, 0, 0.3, 0.7),
            (
                "Account hacked!",
                "Someone else is in my account",
                "Unauthorised access",
                "compromised account",
                "HACKED",
            ),
            (
                (
                    (
                        "Someone logged into my account from {city} last night and changed my email address."
                        " I did not do this!"
                    ),
                    "Unauthorised login from {city} changed account email",
                ),
                (
                    (
                        "I think our account was compromised. There are new admin users we never created and"
                        " files were deleted."
                    ),
                    "Unknown admin users created and files deleted; likely compromise",
                ),
                (
                    (
                        "I got an alert that my password was changed, but I didn't change it. Now I can't get"
                        " in and my saved cards are on that account."
                    ),
                    "Password changed by someone else; saved cards at risk",
                ),
            ),
        ),
        Intent(
            (0, 0.2, 0.5, 0.3),
            (
                "Phishing?",
                "Suspicious message",
                "Is this real?",
                "Fake Nimbus email",
                "Scam warning",
            ),
            (
                (
                    (
                        "I received an email claiming to be from Nimbus asking me to confirm my card details"
                        " at a weird link. Is this legit?"
                    ),
                    "Reports phishing email asking for card details",
                ),
                (
                    (
                        "One of our staff entered their password on a fake login page that looked like"
                        " yours. What should we do?"
                    ),
                    "Employee entered credentials on fake login page",
                ),
                (
                    (
                        "Got an SMS saying my {plan} will be closed unless I log in via a short link. Looks"
                        " fake to me."
                    ),
                    "Suspicious SMS threatens {plan} closure via short link",
                ),
            ),
        ),
        Intent(
            (0, 0, 0.4, 0.6),
            (
                "Data exposure",
                "Privacy problem",
                "Possible data leak",
                "Privacy issue - urgent",
            ),
            (
                (
                    (
                        "A shared link to our customer list is publicly accessible without login. This is a"
                        " serious data leak."
                    ),
                    "Shared customer list link open to public without login",
                ),
                (
                    (
                        "I can see another company's files in my {web}. That's definitely not supposed to"
                        " happen."
                    ),
                    "Customer can see another company's files in {web}",
                ),
                (
                    (
                        "Your {web} appears to expose user email addresses in the page source of public"
                        " profiles."
                    ),
                    "Public profiles in {web} leak user emails in page source",
                ),
            ),
        ),
    ),
    "cancellation": (
        Intent(
            (0.35, 0.5, 0.15, 0),
            (
                "Close our account",
                "Stop subscription",
                "Not renewing",
                "How to cancel?",
                "Leaving Nimbus",
                "End of contract",
            ),
            (
                (
                    (
                        "Please close our {plan} at the end of the current term. We're moving to a different"
                        " provider."
                    ),
                    "Ending {plan} at term end, switching to another provider",
                ),
                (
                    "How do I stop my subscription? I can't find the option anywhere in the {web}.",
                    "Can't find where to stop subscription in {web}",
                ),
                (
                    (
                        "We won't be renewing the {plan} next month. Please make sure we aren't charged"
                        " again."
                    ),
                    "Not renewing {plan}; ensure no further charges",
                ),
                (
                    "I want to delete my account and all my data.",
                    "Customer wants their account and all data deleted",
                ),
                (
                    "Terminate everything on {email} please. Not using it anymore.",
                    "Close all services on {email}, no longer used",
                ),
                (
                    "Our company {company} is closing down, so we need to end all our Nimbus services.",
                    "{company} closing down, ending all Nimbus services",
                ),
            ),
        ),
    ),
}

# Tickets that genuinely sit between categories; used for a ticket of any of `labels`, so
# the same wording is filed under different categories.
AMBIGUOUS: tuple[Intent, ...] = (
    Intent(
        (0.1, 0.5, 0.4, 0),
        (
            "Charged after stopping",
            "Still being charged",
            "Why was I charged?",
            "Subscription charge",
            "{plan} charge",
        ),
        (
            (
                (
                    "I stopped the {plan} on {date} but was still charged {amount} this month. Please sort"
                    " this out."
                ),
                "Charged {amount} after stopping {plan} on {date}",
            ),
            (
                (
                    "Why was I charged {amount} after I downgraded? I'd like that money returned and the"
                    " plan ended."
                ),
                "Unexpected {amount} charge after downgrade; wants it returned",
            ),
            (
                "I don't want the {plan} anymore and I'd like back what I paid for {month}.",
                "Wants {plan} ended and {month} payment returned",
            ),
            (
                "Your system took {amount} for a plan I thought I closed. Can you fix this?",
                "{amount} taken for a plan customer believed closed",
            ),
        ),
        labels=("billing", "refund", "cancellation"),
    ),
    Intent(
        (0.1, 0.45, 0.45, 0),
        (
            "Auto-renewal",
            "Renewal charged",
            "Didn't want to renew",
            "{plan} renewal",
        ),
        (
            (
                (
                    "The {plan} renewed automatically for {amount} even though I meant to stop it. Please"
                    " undo this."
                ),
                "{plan} auto-renewed for {amount}; customer wants it undone",
            ),
            (
                (
                    "I forgot to switch off auto-renew and got charged {amount} for another year. I don't"
                    " need it."
                ),
                "Unwanted yearly renewal of {amount}; customer doesn't need it",
            ),
        ),
        labels=("cancellation", "refund", "billing"),
    ),
    Intent(
        (0, 0.45, 0.45, 0.1),
        (
            "{app} keeps crashing",
            "Error in {app}",
            "Blank screen",
            "{app} not working properly",
            "Problem after update",
        ),
        (
            (
                "The {app} crashes every time I open the settings screen and shows {error}.",
                "{app} crashes opening settings with {error}",
            ),
            (
                "After the latest update the {web} shows a blank white screen on {browser}.",
                "{web} blank screen on {browser} after update",
            ),
            (
                "Getting {error} when I try to save changes in the {web}. Tried {browser} and {os}.",
                "Saving changes in {web} fails with {error}",
            ),
            (
                "{client} {version} freezes when I upload more than a few files at once.",
                "{client} {version} freezes on multi-file upload",
            ),
        ),
        labels=("bug_report", "technical_issue"),
    ),
    Intent(
        (0, 0.35, 0.45, 0.2),
        (
            "Strange login activity",
            "Can't get into my account",
            "account problem",
            "Something odd with my login",
        ),
        (
            (
                "I got a password reset email I didn't request and now my password doesn't work.",
                "Unrequested reset email, then password stopped working",
            ),
            (
                (
                    "My login stopped working and the account page lists a sign-in from {city} I don't"
                    " recognise."
                ),
                "Login fails; unknown sign-in from {city} listed",
            ),
            (
                (
                    "Someone may have my password; I can't log in anymore and the recovery email goes to an"
                    " address I don't know."
                ),
                "Cannot log in; recovery email points to unknown address",
            ),
        ),
        labels=("account_access", "security"),
    ),
    Intent(
        (0.55, 0.4, 0.05, 0),
        (
            "Question about {feature}",
            "Possible to get {feature}?",
            "{app} question",
            "Does it do {feature}?",
        ),
        (
            (
                "Is there a way to get {feature} in the {app}? If not, please consider adding it.",
                "Asks whether {app} offers {feature}, else requests it",
            ),
            (
                "Does the {plan} include {feature}? We can't find it anywhere.",
                "Asks if {plan} includes {feature}",
            ),
            (
                "Can I turn on {feature} for my team somehow?",
                "Wants {feature} enabled for their team",
            ),
        ),
        labels=("product_question", "feature_request"),
    ),
    Intent(
        (0.1, 0.5, 0.4, 0),
        (
            "Damaged on arrival",
            "Order {order} problem",
            "Unhappy with order {order}",
            "Broken {hw}",
        ),
        (
            (
                "My {hw} arrived damaged (order {order}), the box was crushed. What are my options?",
                "{hw} from order {order} arrived damaged in crushed box",
            ),
            (
                "Order {order} never arrived and I don't want to wait any longer. I want my money back.",
                "Order {order} never delivered; customer wants money back",
            ),
            (
                "The {hw} from order {order} was cracked when I opened the parcel. Please sort it out.",
                "{hw} cracked on arrival, order {order}",
            ),
        ),
        labels=("shipping", "refund"),
    ),
    Intent(
        (0.35, 0.5, 0.15, 0),
        (
            "{hw} with {os}",
            "Can't get {hw} to work with {os}",
            "Setup question",
        ),
        (
            (
                "How do I get the {hw} to work with {os}? It doesn't show up at all.",
                "{hw} not detected on {os}; asks how to set up",
            ),
            (
                "Is the {hw} supposed to work with the {app} on {os}? Mine won't pair.",
                "{hw} won't pair with {app} on {os}",
            ),
            (
                "What settings do I need for the {hw} to see my {os} laptop?",
                "Asks for settings so {hw} sees {os} laptop",
            ),
        ),
        labels=("technical_issue", "product_question"),
    ),
    Intent(
        (0.1, 0.55, 0.35, 0),
        (
            "Can't update my card",
            "Payments page not loading",
            "Can't pay invoice",
        ),
        (
            (
                "I can't get into the payment settings to update my card, it keeps logging me out.",
                "Logged out repeatedly when updating card details",
            ),
            (
                "Need to pay invoice {invoice} but my login to the {web} is rejected.",
                "Cannot log in to pay invoice {invoice}",
            ),
            (
                "The payments page says 'access denied' for my user even though I'm the owner.",
                "Account owner gets access denied on payments page",
            ),
        ),
        labels=("billing", "account_access"),
    ),
)

# A sentence about a second topic (two-topic tickets), keyed by that topic's category, and
# the clause an agent would add to the summary.
ASIDES: dict[str, tuple[str, ...]] = {
    "billing": (
        "Separately, my last invoice {invoice} looks higher than usual, can someone check?",
        "Also the card on file needs updating to the one ending {last4}.",
        "Unrelated, but I was charged {amount2} on {date} and I'm not sure what for.",
    ),
    "technical_issue": (
        "On top of that the {web} has been really slow the last few days.",
        "Also the {hw} keeps disconnecting, not sure if related.",
        "By the way I get {error} when I open the {web} in {browser}.",
    ),
    "account_access": (
        "Also I can't log into the {app} on my second laptop, password rejected.",
        "And I still haven't received the verification code to sign in.",
    ),
    "shipping": (
        "Also my other order {order2} hasn't arrived yet, tracking stuck for {days} days.",
        "Plus the replacement {hw} you promised still hasn't shipped.",
    ),
    "refund": (
        "And I'm still waiting on the money back for the return I sent in {month}.",
        "Also please return the {amount2} from the failed order.",
    ),
    "product_question": (
        "Also quick question: does the {hw} work with {os}?",
        "Also, is {feature} included in the {plan}?",
    ),
    "bug_report": (
        "Side note: the export button in {app} {version} produces broken files.",
        "Also found a bug, the date picker shows the wrong month.",
    ),
    "feature_request": (
        "Also, it would be nice if you added {feature}.",
        "Small wish: {feature} would make life a lot easier.",
    ),
    "security": (
        "Also I noticed a login from {city} that wasn't me.",
        "I also got a strange email asking for my password, probably phishing.",
    ),
    "cancellation": (
        "Honestly we're also thinking about cancelling the {plan}.",
        "If this isn't fixed we'll close the account at the end of the month.",
    ),
}
ASIDE_SUMMARY: dict[str, str] = {
    "billing": "also has a payment query",
    "technical_issue": "also reports a technical fault",
    "account_access": "also has login trouble",
    "shipping": "also chasing a delivery",
    "refund": "also awaiting money back",
    "product_question": "also has a product question",
    "bug_report": "also reports a bug",
    "feature_request": "also suggests a feature",
    "security": "also reports suspicious activity",
    "cancellation": "also considering leaving",
}
TOPICS = sorted(ASIDES)

VAGUE_SUBJECTS = (
    "Help please",
    "Question",
    "URGENT",
    "Issue with my account",
    "Re: Support request",
    "Problem",
    "quick question",
    "Need assistance",
    "Following up",
    "(no subject)",
    "Hello",
    "Fwd: your Nimbus account",
    "Please help!!",
    "Support",
    "Complaint",
    "Re: Ticket update",
)

# --- priority cues ----------------------------------------------------------------------

DEADLINES = (
    "I need this sorted by Friday.",
    "We have a client demo tomorrow morning, so this has to work before then.",
    "Our launch is tomorrow so this needs to be fixed today.",
    "Our financial year closes on {date}, need this before then.",
    "Must be resolved before our audit next Monday.",
    "I'm travelling on {date} and need this done before I leave.",
)
# How bad it is, in the writer's words, by priority level (low .. urgent).
CUES: tuple[tuple[str, ...], ...] = (
    (
        "No rush on this.",
        "Not urgent, whenever someone has time.",
        "Low priority, just curious.",
        "Take your time.",
        "No hurry at all.",
        "Just asking for future reference.",
    ),
    (
        "Would be good to get this fixed when you can.",
        "Not critical but a bit annoying.",
        "We can work around it for now.",
        "Would appreciate a reply this week.",
        "It's a nuisance more than anything.",
    ),
    (
        "This is really affecting our work.",
        "Several colleagues are affected too.",
        "Please look at this today if possible.",
        "This is costing us time every day.",
        "I need this sorted quickly please.",
        "We can't do our invoicing until this is fixed.",
    ),
    (
        "This affects all users in our organisation.",
        "Our whole team of {n_users} is blocked.",
        "We're losing money every hour this continues.",
        "Please treat this as an emergency.",
        "Everyone at {company} is affected, not just me.",
        "Our customers can't reach us at all right now.",
    ),
)
ANGRY = (
    "THIS IS THE THIRD TIME I AM WRITING ABOUT THIS.",
    "I AM EXTREMELY DISAPPOINTED.",
    "FIX IT NOW.",
    "WHY IS NOBODY ANSWERING?",
    "UNACCEPTABLE.",
    "I WANT THIS RESOLVED TODAY.",
)

# --- framing: greetings, filler, sign-offs ----------------------------------------------

GREETINGS = (
    "Hi,",
    "Hello,",
    "Hi {agent},",
    "Dear Support,",
    "Hey team,",
    "Good morning,",
    "To whom it may concern,",
    "Hello Nimbus support,",
    "Hi there,",
    "Dear Sir/Madam,",
)
CONTEXT = (
    "We've been customers for about {years} years and mostly happy.",
    "I'm writing this from the airport so excuse the typos.",
    "Our office just moved to a new building last month.",
    "My colleague {name2} set this up originally but is on leave now.",
    "I already tried the chat bot but it kept sending me in circles.",
    "We run a small business ({company}) with a handful of staff.",
    "I'm not very technical, my son usually helps me with this stuff.",
    "I called your phone line yesterday but the wait was over an hour.",
    "Long story short, it's been a hectic week here.",
    "I've read through the help centre articles but didn't find an answer.",
    "We bought the {hw} for the new reception area and it has been great so far.",
    "Our accountant {name2} normally deals with Nimbus but is off until next week.",
    "We use the {plan} for our team of {n_users} and overall it does the job.",
    "Apologies if this is the wrong place to ask, your contact page was confusing.",
    "I've been meaning to write for a while.",
    "Last year we had a similar issue and your colleague sorted it within a day.",
)
TROUBLESHOOTING = (
    "I already tried restarting everything.",
    "Cleared cache and cookies, no difference.",
    "Tried on {browser} and on my phone, same thing.",
    "Our IT person {name3} looked at it too and is stumped.",
    "Logged out and back in, didn't help.",
)
CLOSINGS = (
    "Thanks in advance.",
    "Appreciate any help.",
    "Looking forward to hearing from you.",
    "Please advise.",
    "Let me know if you need anything else from me.",
    "Hope you can help.",
)
SIGNOFFS = ("Thanks,", "Thank you,", "Regards,", "Best,", "Cheers,", "Kind regards,", "thx", "")
TROUBLESHOOT_CATEGORIES = ("technical_issue", "bug_report", "account_access")
CAPS_CATEGORIES = (
    "billing",
    "technical_issue",
    "account_access",
    "shipping",
    "refund",
    "security",
    "cancellation",
)


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
        title = rng.choice(("Office Manager", "IT Admin", "Owner", "Operations", "CTO"))
        return f"{s['name']}\n{title}, {s['company']}"
    if form == 3:
        return f"{s['name']} | {s['company']}"
    return first[0]


def make_ticket(category: str, rng: random.Random) -> tuple[str, str, str, str, str]:
    """Return (subject, body, category, priority, summary) for a ticket of `category`."""
    ambiguous = [it for it in AMBIGUOUS if category in it.labels]
    if ambiguous and rng.random() < AMBIGUOUS_RATE:
        intent = rng.choice(ambiguous)
    else:
        intent = rng.choice(INTENTS[category])
    s = Slots(rng)
    level = rng.choices(range(4), weights=intent.prio)[0]

    vague = rng.random() < VAGUE_SUBJECT_RATE
    subject = rng.choice(VAGUE_SUBJECTS if vague else intent.subjects).format_map(s)
    body_tpl, summary_tpl = rng.choice(intent.cases)
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
    return subject, body, label, LEVELS[level], summary


def generate(n: int, seed: int) -> list[list[str]]:
    """All rows (header first); bodies, hence (subject, body) pairs, are unique."""
    rng = random.Random(seed)
    rows = [["id", "subject", "body", "category", "priority", "summary"]]
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
