"""A generated trace of a support product's traffic, deterministic for its seed, each request with the
answer it should get. The simulated upstream's directives (``apps.simulator``) decide which model answers
what correctly; every request asks for ``gpt-4o`` (the strong model the app was written against).

- ``faq``: paraphrases of a dozen questions, among them look-alike siblings whose right answers differ
  (monthly/yearly, enable/disable, iOS/Android, add/remove). Every model gives the right answer, a code
  word (``[[sim:answer=…]]``). The directive is part of the embedded prompt: its code is a lower-case word
  of the same shape for every question, so it neither names nor numbers anything the cache guard reads,
  and siblings' codes differ by one word, as their questions do.
- ``tickets``: classification in one feature. Easy tickets: every model answers the label, the cheap ones
  with a confidence of 0.95-0.995. Hard ones: the cheap models answer a wrong label with 0.88-0.92
  confidence (what the seed's 0.85 threshold keeps), the strong model the right one.
- ``widget``: a few dashboard prompts repeated word for word; only the strong model's answer is right.
- ``docs``: long documents to summarise, never streamed (batchable); only the strong model is right.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

STRONG = "gpt-4o"

# (code, paraphrases); siblings are neighbours in this list.
FAQ: list[tuple[str, list[str]]] = [
    ("amber", ["How much is the monthly plan?", "What does the monthly subscription cost?",
               "What's the price of the monthly plan?", "Monthly plan price?",
               "How much do I pay for the monthly subscription?", "What is the cost of the monthly plan?"]),
    ("birch", ["How much is the yearly plan?", "What does the yearly subscription cost?",
               "What's the price of the yearly plan?", "Yearly plan price?",
               "How much do I pay for the yearly subscription?", "What is the cost of the yearly plan?"]),
    ("cedar", ["How do I enable two-factor authentication?", "How can I enable 2FA on my account?",
               "Where do I enable two-factor login?", "Steps to enable two-factor authentication?",
               "I want to enable two-factor authentication, how?", "How to enable 2FA?"]),
    ("delta", ["How do I disable two-factor authentication?", "How can I disable 2FA on my account?",
               "Where do I disable two-factor login?", "Steps to disable two-factor authentication?",
               "I want to disable two-factor authentication, how?", "How to disable 2FA?"]),
    ("ember", ["Sync fails on iOS, any fix?", "The app does not sync on iOS, what can I do?",
               "How do I fix sync problems on iOS?", "My notes won't sync on iOS.",
               "Syncing is broken on iOS, help?", "Why does sync fail on iOS?"]),
    ("fjord", ["Sync fails on Android, any fix?", "The app does not sync on Android, what can I do?",
               "How do I fix sync problems on Android?", "My notes won't sync on Android.",
               "Syncing is broken on Android, help?", "Why does sync fail on Android?"]),
    ("grove", ["How do I add a member to my team?", "How can I add someone to my team?",
               "Add a teammate to my workspace, how?", "Steps to add a team member?",
               "I need to add a colleague to my team.", "How to add people to a team?"]),
    ("heath", ["How do I remove a member from my team?", "How can I remove someone from my team?",
               "Remove a teammate from my workspace, how?", "Steps to remove a team member?",
               "I need to remove a colleague from my team.", "How to remove people from a team?"]),
    ("inlet", ["How do I reset my password?", "I forgot my password, how can I reset it?",
               "How can I reset my password?", "Password reset steps?",
               "I can't remember my password, what now?", "Where do I reset a forgotten password?"]),
    ("juniper", ["Where can I download my invoices?", "How do I get copies of my invoices?",
                 "Can I download past invoices?", "Where are my invoices?",
                 "How do I find old invoices?", "I need my invoices as PDF files."]),
    ("kestrel", ["How do I delete my account?", "Can I delete my account permanently?",
                 "Steps to delete my account?", "I want my account deleted.",
                 "How can I close and delete my account?", "Where do I delete my account?"]),
    ("larch", ["Do you offer a student discount?", "Is there a discount for students?",
               "Can students get a cheaper price?", "Student pricing available?",
               "Do students pay less?", "Any discount if I'm a student?"]),
]  # fmt: skip

LABELS = ("billing", "bug", "account", "shipping", "feature")
TICKET_TEMPLATES = {
    "billing": ["I was charged twice for order {n}.", "My invoice {n} shows the wrong amount.",
                "Why was my card billed for order {n}?"],
    "bug": ["The export button crashes on report {n}.", "Page {n} shows an error when I save.",
            "The app freezes when I open project {n}."],
    "account": ["I cannot log in to account {n}.", "Please change the email on account {n}.",
                "My account {n} is locked."],
    "shipping": ["Parcel {n} has not arrived yet.", "Where is my package {n}?",
                 "Delivery {n} went to the wrong address."],
    "feature": ["Could you add dark mode? Request {n}.", "Please support calendar export, idea {n}.",
                "It would be great to have tags, suggestion {n}."],
}  # fmt: skip
TICKET_SYSTEM = "Classify the support ticket. Answer with one word: billing, bug, account, shipping or feature."

WIDGETS = ("sales", "signups", "churn", "tickets", "uptime", "revenue", "traffic", "errors")
DOC_WORDS = (
    "agreement party clause term payment notice liability warranty service delivery renewal "
    "termination confidential obligation schedule invoice period licence data breach remedy"
).split()


@dataclass(frozen=True)
class TraceRequest:
    feature: str
    messages: list[dict[str, Any]] = field(hash=False)
    expected: str


def _user(text: str, system: str | None = None) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": text}]


def generate(seed: int = 18, *, tickets: int = 80, hard_share: float = 0.25) -> list[TraceRequest]:
    """The trace, in the order it is sent (features interleaved)."""
    rng = random.Random(seed)
    trace: list[TraceRequest] = []
    for code, paraphrases in FAQ:
        trace += [TraceRequest("faq", _user(f"{q} [[sim:answer={code}]]"), code) for q in paraphrases]
    for n in range(tickets):
        label = rng.choice(LABELS)
        text = rng.choice(TICKET_TEMPLATES[label]).format(n=rng.randint(1000, 9999))
        if n < tickets * hard_share:
            wrong = rng.choice([other for other in LABELS if other != label])
            directives = (f"[[sim:answer={wrong}]][[sim:confidence={rng.uniform(0.88, 0.92):.3f}]]"
                          f"[[sim:{STRONG}/answer={label}]]")  # fmt: skip
        else:
            directives = f"[[sim:answer={label}]][[sim:confidence={rng.uniform(0.95, 0.995):.3f}]]"
        trace.append(TraceRequest("tickets", _user(f"{text} {directives}", TICKET_SYSTEM), label))
    for widget in WIDGETS:
        code = f"{widget}-summary"
        prompt = f"Summarise today's {widget} numbers for the dashboard widget. [[sim:{STRONG}/answer={code}]]"
        trace += [TraceRequest("widget", _user(prompt), code) for _ in range(6)]
    for k in range(6):
        body = " ".join(rng.choice(DOC_WORDS) for _ in range(400))
        code = f"contract-{k}-summary"
        trace.append(TraceRequest("docs", _user(f"Summarise this contract:\n{body}\n[[sim:{STRONG}/answer={code}]]"),
                                  code))  # fmt: skip
    rng.shuffle(trace)
    return trace
