"""Write ``triage.jsonl``: 500 labelled support tickets for ``manage.py eval_route`` against the simulator.

Each ticket carries simulator directives that fix what each model answers, so
the replay is deterministic: the strong model (gpt-4o) is right 96% of the
time; the cheap one (gpt-4o-mini) 90%, usually confident when right and unsure
when wrong, with some confidently wrong and some unsure but right answers, as
real cheap models are. The numbers are a simulation, not a measurement of
those models. Run ``python apps/routing/data/make_triage.py`` to regenerate.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

LABELS = ["billing", "shipping", "account", "refund", "technical"]
SUBJECTS = {
    "billing": ["I was charged twice this month", "My invoice shows the wrong VAT number", "Card declined at renewal"],
    "shipping": ["The parcel has not moved in a week", "Tracking says delivered but nothing came", "Wrong address"],
    "account": ["I cannot log in after the reset", "Please merge my two accounts", "Change the account owner"],
    "refund": ["I want my money back for the order", "The refund never arrived", "Return the unused seats"],
    "technical": ["The export button does nothing", "Sync fails on Android", "The API returns 502 since noon"],
}
SYSTEM = "Classify the support ticket. Answer with one word: " + ", ".join(LABELS) + "."


def ticket(rng: random.Random, number: int) -> dict[str, object]:
    label = rng.choice(LABELS)
    wrong = [other for other in LABELS if other != label]
    strong = label if rng.random() < 0.96 else rng.choice(wrong)
    if rng.random() < 0.90:
        cheap = label
        confidence = rng.uniform(0.75, 0.99) if rng.random() < 0.93 else rng.uniform(0.35, 0.69)
    else:
        cheap = rng.choice(wrong)
        confidence = rng.uniform(0.30, 0.69) if rng.random() < 0.80 else rng.uniform(0.75, 0.95)
    text = (
        f"Ticket {number}: {rng.choice(SUBJECTS[label])}. "
        f"[[sim:gpt-4o-mini/answer={cheap}]] [[sim:gpt-4o-mini/confidence={confidence:.3f}]] "
        f"[[sim:gpt-4o/answer={strong}]]"
    )
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}], "expected": label}


def main() -> None:
    rng = random.Random(2026)
    out = Path(__file__).with_name("triage.jsonl")
    with out.open("w", encoding="utf-8") as fh:
        for number in range(1, 501):
            fh.write(json.dumps(ticket(rng, number)) + "\n")


if __name__ == "__main__":
    main()
