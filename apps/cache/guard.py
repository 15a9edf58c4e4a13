"""The check a semantic hit must pass besides similarity: the prompts agree on their details.

Sentence embeddings place "flight to Berlin on 21 April" next to "… 21 October"
and "Sync fails on iOS" next to "… on Android": the sentences are alike and
only a detail differs, and that detail is what the answer is about. No
threshold separates those pairs from real paraphrases (calibrate_cache shows
it), so before a semantic hit is served the two prompts must also agree on:

- numbers: the same numeric values in the same order ("2,500" = "2500",
  "10th" = "10", number words one to twelve = their digits), so "one license
  on two computers" is not "two licenses on one computer" (nor, strictly,
  "a single license on 2 machines");
- names: every name in one prompt occurs as a word in the other, and the
  names they share occur in the same order ("25 GBP in USD" is not "25 USD in
  GBP"). A name is a capitalised word that does not start a sentence, an
  all-caps or mixed-case word (CSV, iOS), a month or weekday, or a currency
  ("$", "dollars" and "USD" are one currency);
- opposites: of each built-in set of alternatives (``OPPOSITES``: monthly or
  yearly, enable or disable, add or remove, on or off, iOS or Android, ...)
  both prompts mention the same ones. "What's the price of the yearly plan?"
  is not "… of the monthly plan?", at any similarity. Mentioning one of a set
  against none of it is a difference too ("the yearly plan" against "the
  plan"), except for words too common to mean a choice on their own ("on"):
  those count only when the other prompt names an alternative of their set.

The check only ever turns a hit into a miss. It errs that way too: "to Berlin
from Paris" against "from Paris to Berlin" is a miss, a paraphrase lost, never
a wrong answer served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"), start=1
    )
}
_CALENDAR = frozenset(
    "january february march april may june july august september october november december "
    "monday tuesday wednesday thursday friday saturday sunday".split()
)
_CURRENCIES = {
    **dict.fromkeys(("$", "usd", "dollar", "dollars"), "usd"),
    **dict.fromkeys(("€", "eur", "euro", "euros"), "eur"),
    **dict.fromkeys(("£", "gbp", "pound", "pounds"), "gbp"),
    **dict.fromkeys(("¥", "jpy", "yen"), "jpy"),
}
# A number (digits with thousands separators and decimals), a currency sign, or a word.
_TOKEN = re.compile(r"(?P<number>\d[\d,]*(?:\.\d+)?)|(?P<sign>[$€£¥])|(?P<word>[^\W\d_][\w'’+#-]*)")
_SENTENCE_END = re.compile(r"[.!?:;\n]")


# Sets of alternatives the answer depends on but an embedding barely sees. Each alternative is the
# spellings that mean it (inflections included: there is no stemmer); a "*" marks a spelling too
# common to count unless the other prompt names another alternative of its set ("sync fails on iOS").
OPPOSITES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("daily", "day", "days", "per-day"), ("weekly", "week", "weeks"),
     ("monthly", "month", "months", "month-to-month"),
     ("yearly", "year", "years", "annual", "annually", "per-year"), ("quarterly", "quarter", "quarters")),
    (("enable", "enables", "enabled", "enabling", "activate", "activated", "activating", "unmute"),
     ("disable", "disables", "disabled", "disabling", "deactivate", "deactivated", "deactivating", "mute")),
    (("add", "adds", "added", "adding", "create", "creates", "created", "creating", "insert"),
     ("remove", "removes", "removed", "removing", "delete", "deletes", "deleted", "deleting", "erase")),
    (("on*", "turn-on"), ("off", "turn-off")),
    (("ios", "iphone", "ipad"), ("android",), ("windows",), ("macos", "mac"), ("linux",)),
    (("upgrade", "upgrades", "upgraded", "upgrading"), ("downgrade", "downgrades", "downgraded", "downgrading")),
    (("increase", "increases", "increased", "increasing", "raise", "raised", "raising"),
     ("decrease", "decreases", "decreased", "decreasing", "reduce", "reduced", "reducing", "lower", "lowered")),
    (("import", "imports", "imported", "importing"), ("export", "exports", "exported", "exporting")),
    (("upload", "uploads", "uploaded", "uploading"), ("download", "downloads", "downloaded", "downloading")),
    (("login", "log-in", "sign-in", "signin"), ("logout", "log-out", "sign-out", "signout")),
    (("subscribe", "subscribed", "subscribing"), ("unsubscribe", "unsubscribed", "unsubscribing", "cancel",
     "cancelled", "canceled", "cancelling", "canceling")),
    (("lock", "locks", "locked", "locking"), ("unlock", "unlocks", "unlocked", "unlocking")),
    (("start", "starts", "started", "starting"), ("stop", "stops", "stopped", "stopping")),
    (("buy", "buying", "bought", "purchase", "purchased"), ("sell", "selling", "sold"),
     ("refund", "refunds", "refunded")),
    (("public",), ("private",)),
    (("free",), ("paid",)),
    (("minimum", "min", "lowest"), ("maximum", "max", "highest")),
    (("before",), ("after",)),
    (("include", "includes", "included", "including"), ("exclude", "excludes", "excluded", "excluding")),
    (("allow", "allows", "allowed", "allowing", "whitelist", "allowlist"),
     ("block", "blocks", "blocked", "blocking", "deny", "denied", "blacklist", "denylist")),
    (("accept", "accepts", "accepted", "approve", "approved"), ("reject", "rejects", "rejected", "decline",
     "declined")),
    (("send", "sends", "sending", "sent"), ("receive", "receives", "received", "receiving")),
)  # fmt: skip


def _opposites_index() -> dict[str, tuple[int, int, bool]]:
    """spelling -> (set, alternative, weak) for every spelling of ``OPPOSITES``."""
    index: dict[str, tuple[int, int, bool]] = {}
    for group, alternatives in enumerate(OPPOSITES):
        for alternative, spellings in enumerate(alternatives):
            for spelling in spellings:
                index[spelling.rstrip("*")] = (group, alternative, spelling.endswith("*"))
    return index


_OPPOSITE = _opposites_index()


@dataclass(frozen=True, slots=True)
class Details:
    numbers: tuple[str, ...]  # canonical, in order of first occurrence
    names: tuple[str, ...]  # lower-cased, in order of first occurrence
    words: frozenset[str]  # every word, lower-cased, currencies canonical
    # (set, alternative, weak) of each ``OPPOSITES`` alternative mentioned
    opposites: frozenset[tuple[int, int, bool]] = frozenset()


def details(text: str) -> Details:
    """The numbers, names and words of ``text``, as compared by :func:`agree`."""
    numbers: list[str] = []
    names: list[str] = []
    words: set[str] = set()
    previous_end = 0
    for match in _TOKEN.finditer(text):
        sentence_start = previous_end == 0 or bool(_SENTENCE_END.search(text, previous_end, match.start()))
        previous_end = match.end()
        number, sign, word = match.group("number", "sign", "word")
        if number is not None:
            _add_once(numbers, _canonical_number(number))
            continue
        token = sign or word
        lowered = token.lower()
        canonical = _CURRENCIES.get(lowered, lowered)
        if lowered in _NUMBER_WORDS:
            _add_once(numbers, _NUMBER_WORDS[lowered])
        words.add(canonical)
        if _is_name(token, lowered, sentence_start):
            _add_once(names, canonical)
    opposites = frozenset(_OPPOSITE[word] for word in words if word in _OPPOSITE)
    return Details(tuple(numbers), tuple(names), frozenset(words), opposites)


def _add_once(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _canonical_number(number: str) -> str:
    number = number.replace(",", "")
    return number.rstrip("0").rstrip(".") if "." in number else number.lstrip("0") or "0"


def _is_name(token: str, lowered: str, sentence_start: bool) -> bool:
    if lowered in _CURRENCIES or lowered in _CALENDAR:
        return True
    if any(c.isupper() for c in token[1:]):  # CSV, iOS, macOS
        return True
    return token[0].isupper() and not sentence_start and token != "I"


def agree(a: str, b: str) -> bool:
    """Whether prompts ``a`` and ``b`` agree on numbers, names and opposites (see the module docstring)."""
    first, second = details(a), details(b)
    if first.numbers != second.numbers:
        return False
    if first.opposites != second.opposites and not _opposites_agree(first.opposites, second.opposites):
        return False
    if not set(first.names) <= second.words or not set(second.names) <= first.words:
        return False
    shared_first = [n for n in first.names if n in second.names]
    shared_second = [n for n in second.names if n in first.names]
    return shared_first == shared_second


def _opposites_agree(first: frozenset[tuple[int, int, bool]], second: frozenset[tuple[int, int, bool]]) -> bool:
    """Each set of alternatives is mentioned alike, a weak spelling counting only against another
    alternative of its set."""
    for group in {g for g, _, _ in first | second}:
        mine = {(a, weak) for g, a, weak in first if g == group}
        theirs = {(a, weak) for g, a, weak in second if g == group}
        if not theirs:
            mine = {m for m in mine if not m[1]}
        if not mine:
            theirs = {t for t in theirs if not t[1]}
        if {a for a, _ in mine} != {a for a, _ in theirs}:
            return False
    return True
