"""A help-desk export in another system's shape, for the README's worked example.

Real exports differ from `data/raw/tickets.csv` in ways the prepare stage must handle by
params alone: no id column, the same ticket submitted twice, other column names, a routing
label of their own, and agent replies that run to a few hundred tokens. This script turns
the embedded tickets into such an export (`data/raw/helpdesk_export.csv`, seeded: the same
seed gives identical bytes):

- `created_at`, `title`, `description`, `team`, `first_reply`; no id column;
- `team`: the queue a ticket was routed to (five teams over the ten categories);
- `first_reply`: the agent's first answer, built from the ticket's summary, its team's
  standard steps and its priority (so a reply must get all three right);
- about 3 % of the tickets submitted a second time a little later, with the description's
  whitespace and case changed (what `prepare.duplicates: drop` finds and counts).

    python data/make_export.py            # then: README.md, "A worked example"
"""

from __future__ import annotations

import argparse
import csv
import random
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
TEAMS = {
    "account_access": "accounts", "security": "accounts",
    "billing": "billing", "refund": "billing", "cancellation": "billing",
    "shipping": "logistics",
    "product_question": "product", "feature_request": "product",
    "technical_issue": "engineering", "bug_report": "engineering",
}  # fmt: skip
RESUBMIT_RATE = 0.03
GREETINGS = ("Hi there,", "Hello,", "Thank you for contacting us,")
STEPS = {  # each team's standard first answer, in three wordings
    "accounts": (
        "For your security we never change sign-in details over email. Please open the sign-in "
        "page, choose 'Trouble signing in' and follow the link we send to the address on the "
        "account; the link is valid for one hour. If two-factor authentication is on and you "
        "no longer have the device, reply with the last four digits of the card on file.",
        "We have checked the account and the sign-in attempts we see. The quickest way back in "
        "is the reset link on the sign-in page; it goes to the address on the account. If you "
        "believe someone else has signed in, change the password at once and we will review "
        "the recent sessions with you.",
        "Account changes need a confirmation from the owner of the account. Please sign in, open "
        "Settings, then Security, and follow the steps there; if you cannot sign in at all, "
        "reply from the address on the account and we will verify you by a short call.",
    ),
    "billing": (
        "I have looked at the invoices and payments on your account. Any amount charged in "
        "error is returned to the original payment method, which usually takes five to seven "
        "working days to show on your statement. You can download every invoice from the "
        "Billing page, and the plan change takes effect from the next billing date.",
        "Our billing team has reviewed the charges on the account. Where a charge was not "
        "expected we reverse it and send a credit note by email; the money is back on the card "
        "within a week. Please keep the order or invoice number in your reply so that we can "
        "match it quickly.",
        "Thank you for the details of the payment. We process refunds and cancellations within "
        "two working days of the request, and you will receive an email confirmation with the "
        "amount and the date. Nothing more is charged once the cancellation is confirmed.",
    ),
    "logistics": (
        "I have checked the shipment with our carrier. Parcels that show no movement for five "
        "days are traced by the carrier, and if it is not found we send a replacement or refund "
        "the order, whichever you prefer. You can follow the parcel with the tracking link in "
        "your confirmation email.",
        "Our warehouse has confirmed the order details. If an item arrived damaged or is "
        "missing, please reply with a photo of the parcel and its label; we will send the "
        "missing item at no cost. Address changes are possible until the parcel leaves the "
        "warehouse.",
        "Delivery times depend on the carrier and the destination. I have asked the carrier for "
        "an update and will pass it on as soon as it arrives; if the delivery date has passed, "
        "we arrange a replacement or a refund.",
    ),
    "product": (
        "Good question. The feature you are asking about is in the admin console under "
        "Settings; the help centre article 'Getting started with the admin console' walks "
        "through it step by step. I have also passed your suggestion to our product team, who "
        "read every request when they plan the next releases.",
        "Thank you for the suggestion. I have logged it with our product managers together with "
        "your use case, which helps them weigh it against other requests. In the meantime, the "
        "help centre lists the options that come closest to what you describe.",
        "You can find this in the documentation: open the help centre, search for the feature "
        "by name, and follow the steps. If the option does not appear, your plan may not "
        "include it; let me know and I will check which plan does.",
    ),
    "engineering": (
        "Thank you for the detailed report. Our engineers have reproduced the problem and are "
        "working on a fix; until then, clearing the app's cache and restarting it avoids the "
        "error in most cases. Please send the app version and the time of the last error if it "
        "happens again.",
        "I have opened a ticket with our engineering team and attached your description. To "
        "help them, please send the steps that lead to the error, the device and the version "
        "you use, and a screenshot if you have one. We will update you when the fix is "
        "released.",
        "We are aware of a problem that matches your description and a fix is being tested. "
        "As a workaround, sign out and back in, or use the web version until the update "
        "arrives. I will write again as soon as it is available.",
    ),
}
BY_PRIORITY = {
    "low": "There is no rush on our side either; we will follow up within three working days.",
    "medium": "We will follow up within one working day.",
    "high": "I have marked this as high priority and we will update you today.",
    "urgent": "This has been escalated to the on-call team, who will contact you within the hour.",
}
AFTERWORDS = (
    "If anything in this answer is unclear, simply reply to this email and it will reach the "
    "same team; there is no need to open a new ticket, which would only start the queue again.",
    "You can also follow the status of this ticket in the customer portal, where every answer "
    "and change of status appears as soon as it is made.",
    "Our help centre is open around the clock and holds guides for the most common questions, "
    "in case you need something before we write again.",
)
CLOSINGS = ("Kind regards,", "Best wishes,", "Thanks for your patience,")


def reply(summary: str, team: str, priority: str, rng: random.Random) -> str:
    """The agent's first answer: greeting, the request in the agent's words, the team's
    steps, what the priority promises, a closing."""
    return "\n\n".join(
        (
            rng.choice(GREETINGS),
            f"Thank you for writing to us. Our summary of your request: {summary}.",
            rng.choice(STEPS[team]),
            BY_PRIORITY[priority],
            rng.choice(AFTERWORDS),
            f"{rng.choice(CLOSINGS)}\nThe {team} team",
        )
    )


def resubmitted(text: str, rng: random.Random) -> str:
    """The same description sent again: other line breaks, spacing or case."""
    change = rng.choice((str.lower, lambda t: t.replace("\n\n", "\n \n"), lambda t: f" {t}  "))
    return change(text)


def make_export(tickets: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows, created = [], datetime(2026, 1, 5, 8, 0)
    for t in tickets.itertuples():
        created += timedelta(minutes=rng.randint(3, 90))
        team = TEAMS[t.category]
        row = {
            "created_at": created.isoformat(timespec="minutes"),
            "title": t.subject,
            "description": t.body,
            "team": team,
            "first_reply": reply(t.summary, team, t.priority, rng),
        }
        rows.append(row)
        if rng.random() < RESUBMIT_RATE:
            later = created + timedelta(minutes=rng.randint(1, 30))
            rows.append(
                row
                | {
                    "created_at": later.isoformat(timespec="minutes"),
                    "description": resubmitted(t.body, rng),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=Path, default=HERE / "raw" / "tickets.csv")
    parser.add_argument("--out", type=Path, default=HERE / "raw" / "helpdesk_export.csv")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    tickets = pd.read_csv(args.tickets, keep_default_na=False)
    export = make_export(tickets, args.seed)
    tmp = args.out.with_suffix(".tmp")
    export.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    tmp.replace(args.out)
    print(f"{args.out}: {len(export)} rows ({len(export) - len(tickets)} resubmitted)")


if __name__ == "__main__":
    main()
