"""The numbers-and-names check a semantic hit must pass besides similarity."""

from __future__ import annotations

import pytest

from apps.cache.guard import OPPOSITES, agree, details, learned_opposites


def test_numbers_are_compared_by_value_in_order() -> None:
    assert details("Can I move 2,500 dollars on the 10th? Order #0042").numbers == ("2500", "10", "42")
    assert details("Is 1.50 the same as 1.5?").numbers == ("1.5",)
    assert details("one license on two computers").numbers == ("1", "2")


def test_names_skip_sentence_starts_and_fold_currencies() -> None:
    found = details("How do I sync iOS with Slack? Then export as CSV for $5 in July.")
    assert found.names == ("ios", "slack", "csv", "usd", "july")
    assert details("I can't find my key").names == ()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("I need a flight Rome to Berlin, June 23", "I need a flight Rome to Berlin, February 23"),
        ("The API returns 429 after 3000 requests per minute", "The API returns 429 after 1000 requests per minute"),
        ("Sync fails on iOS, any fix?", "Sync fails on Android, any fix?"),
        ("Can I transfer 200 euros to savings?", "Can I transfer 200 dollars to savings?"),
        ("What is 25 GBP in USD?", "How much is 25 USD in GBP?"),
        ("Can I use two licenses on one computer?", "Can I use one license on two computers?"),
        ("How big can uploaded files be on the Free plan?", "How big can uploaded files be on the Team plan?"),
    ],
)
def test_prompts_that_differ_in_a_detail_disagree(a: str, b: str) -> None:
    assert not agree(a, b)
    assert not agree(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I reset my password?", "I forgot my password, how can I reset it?"),
        ("Has someone reserved the meeting room on 13 January?", "is the meeting room taken on january 13"),
        ("slack integration setup steps", "What's the setup for the Slack integration?"),
        ("Can I transfer 500 dollars to my savings account today?", "I want to send $500 to my savings, can I?"),
        ("Sync fails on iOS, any fix?", "iOS: sync is broken for me, any workaround?"),
        ("I'm still waiting on order number 90021", "My order #90021 hasn't arrived yet"),
    ],
)
def test_paraphrases_agree(a: str, b: str) -> None:
    assert agree(a, b)
    assert agree(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What's the price of the monthly subscription?", "What's the price of the yearly subscription?"),
        ("How much is the annual plan?", "How much is the month-to-month plan?"),
        ("How do I enable two-factor login?", "How do I disable two-factor login?"),
        ("How can I add a teammate to my workspace?", "How can I remove a teammate from my workspace?"),
        ("Turn dark mode on", "Turn dark mode off"),
        ("sync fails on ios, any fix?", "sync fails on android, any fix?"),
        ("How do I upgrade my plan?", "How do I downgrade my plan?"),
        ("How do I export my contacts?", "How do I import my contacts?"),
        ("Is the public API rate limited?", "Is the private API rate limited?"),
        ("What is the maximum upload size?", "What is the minimum upload size?"),
        ("I want to cancel my subscription, how?", "How do I renew my subscription?"),
    ],
)
def test_prompts_that_name_opposite_alternatives_disagree(a: str, b: str) -> None:
    assert not agree(a, b)
    assert not agree(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What's the price of the yearly subscription?", "How much does the annual subscription cost?"),
        ("How do I delete a teammate?", "How can I remove a teammate?"),
        ("Can I deactivate notifications?", "how to disable notifications"),
        ("Sync fails on iOS, any fix?", "iOS: sync is broken for me, any workaround?"),
        ("What does the monthly plan cost?", "monthly plan price?"),
        # A prompt that names none of a set is not compared on it.
        ("Can I download my invoices in CSV format?", "Is there a way to get all invoices as a CSV file?"),
        ("Bill me on the 20th of each month instead", "Is it possible to move my billing day to the 20th?"),
    ],
)
def test_prompts_that_name_the_same_alternatives_agree(a: str, b: str) -> None:
    assert agree(a, b)
    assert agree(b, a)


def test_opposites_are_found_in_any_case_and_every_spelling_is_unique() -> None:
    spellings = [s for group in OPPOSITES for alternative in group for s in alternative]
    assert len(spellings) == len(set(spellings))
    assert details("Enable it MONTHLY").opposites == details("enable it monthly").opposites != frozenset()


def test_word_pairs_learned_from_trial_disagreements_keep_look_alikes_apart() -> None:
    disagreements = [
        ("How do I reach the sales team?", "How do I reach the support team?"),
        ("Can the sales team call me back?", "Can the support team call me back?"),
        ("What's the price of the yearly plan?", "What's the price of the monthly plan?"),  # built in already
        ("Where is my parcel?", "Where is my parcel now please?"),  # two words differ: nothing to learn
        ("Is the blue widget in stock?", "Is the green widget in stock?"),  # seen once: not learned yet
    ]
    learned = learned_opposites(disagreements)
    assert learned == frozenset({("sales", "support")})
    assert agree("Email for the sales desk?", "Email for the support desk?"), "the built-in checks alone"
    assert not agree("Email for the sales desk?", "Email for the support desk?", learned)
    assert agree("Email for the sales desk?", "Sales desk email?", learned), "a pair named on one side only"
    assert agree("sales and support hours", "support and sales hours", learned), "both named on both sides"
