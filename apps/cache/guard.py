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
  that both prompts name, they name the same ones. "What's the price of the
  yearly plan?" is not "… of the monthly plan?", at any similarity. A prompt
  that names none of a set ("the plan") is not compared on it: such pairs are
  paraphrases far more often ("export" against "get all invoices as a file").

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
# spellings that mean it (inflections included: there is no stemmer).
OPPOSITES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("daily",), ("weekly",), ("monthly", "month-to-month"), ("yearly", "annual", "annually"), ("quarterly",)),
    (("enable", "enables", "enabled", "enabling", "activate", "activated", "activating", "unmute"),
     ("disable", "disables", "disabled", "disabling", "deactivate", "deactivated", "deactivating", "mute")),
    (("add", "adds", "added", "adding", "create", "creates", "created", "creating", "insert"),
     ("remove", "removes", "removed", "removing", "delete", "deletes", "deleted", "deleting", "erase")),
    (("on", "turn-on"), ("off", "turn-off")),
    (("ios", "iphone", "ipad"), ("android",), ("windows",), ("macos", "mac"), ("linux",)),
    (("upgrade", "upgrades", "upgraded", "upgrading"), ("downgrade", "downgrades", "downgraded", "downgrading")),
    (("increase", "increases", "increased", "increasing", "raise", "raised", "raising"),
     ("decrease", "decreases", "decreased", "decreasing", "reduce", "reduced", "reducing", "lower", "lowered")),
    (("import", "imports", "imported", "importing", "upload", "uploads", "uploaded", "uploading"),
     ("export", "exports", "exported", "exporting", "download", "downloads", "downloaded", "downloading")),
    (("login", "log-in", "sign-in", "signin"), ("logout", "log-out", "sign-out", "signout")),
    (("subscribe", "subscribed", "subscribing", "renew", "renewed", "reactivate", "resume"),
     ("unsubscribe", "unsubscribed", "unsubscribing", "cancel", "cancelled", "canceled", "cancelling", "canceling",
      "pause", "paused")),
    (("lock", "locks", "locked", "locking"), ("unlock", "unlocks", "unlocked", "unlocking")),
    (("public",), ("private",)),
    (("minimum", "min", "lowest"), ("maximum", "max", "highest")),
    (("before",), ("after",)),
    (("include", "includes", "included", "including"), ("exclude", "excludes", "excluded", "excluding")),
    (("allow", "allows", "allowed", "allowing", "whitelist", "allowlist"),
     ("block", "blocks", "blocked", "blocking", "deny", "denied", "blacklist", "denylist")),
    (("accept", "accepts", "accepted", "approve", "approved"),
     ("reject", "rejects", "rejected", "decline", "declined")),
    (("send", "sends", "sending", "sent"), ("receive", "receives", "received", "receiving")),
)  # fmt: skip

# spelling -> (set, alternative), for every spelling of ``OPPOSITES``
_OPPOSITE = {
    spelling: (group, alternative)
    for group, alternatives in enumerate(OPPOSITES)
    for alternative, spellings in enumerate(alternatives)
    for spelling in spellings
}


@dataclass(frozen=True, slots=True)
class Details:
    numbers: tuple[str, ...]  # canonical, in order of first occurrence
    names: tuple[str, ...]  # lower-cased, in order of first occurrence
    words: frozenset[str]  # every word, lower-cased, currencies canonical
    opposites: frozenset[tuple[int, int]] = frozenset()  # (set, alternative) of each ``OPPOSITES`` one named


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


def agree(a: str, b: str, learned: frozenset[tuple[str, str]] = frozenset()) -> bool:
    """Whether prompts ``a`` and ``b`` agree on numbers, names and opposites (see the module docstring),
    the word pairs a project's semantic-cache trials ``learned`` (``learned_opposites``) included."""
    first, second = details(a), details(b)
    if first.numbers != second.numbers:
        return False
    if learned and _learned_apart(first.words, second.words, learned):
        return False
    if first.opposites != second.opposites and not _opposites_agree(first.opposites, second.opposites):
        return False
    if not set(first.names) <= second.words or not set(second.names) <= first.words:
        return False
    shared_first = [n for n in first.names if n in second.names]
    shared_second = [n for n in second.names if n in first.names]
    return shared_first == shared_second


def _opposites_agree(first: frozenset[tuple[int, int]], second: frozenset[tuple[int, int]]) -> bool:
    """Of each set of alternatives both prompts name, they name the same ones."""
    shared = {group for group, _ in first} & {group for group, _ in second}
    return {o for o in first if o[0] in shared} == {o for o in second if o[0] in shared}


def _learned_apart(first: frozenset[str], second: frozenset[str], learned: frozenset[tuple[str, str]]) -> bool:
    """One prompt has one word of a learned pair that the other lacks, and the other has its partner."""
    only_first, only_second = first - second, second - first
    return any((x in only_first and y in only_second) or (y in only_first and x in only_second) for x, y in learned)


def learned_opposites(pairs: list[tuple[str, str]], *, min_seen: int = 2) -> frozenset[tuple[str, str]]:
    """The word pairs a cached answer was wrong across: of each disagreement (the request's prompt, the
    cached prompt whose answer did not match), the one word each has that the other lacks, when that is
    all that differs and the built-in checks did not already tell them apart. A pair counts once seen
    ``min_seen`` times, so that one odd paraphrase teaches nothing."""
    seen: dict[tuple[str, str], int] = {}
    for asked, cached in pairs:
        first, second = details(asked), details(cached)
        if not agree(asked, cached):
            continue  # numbers, names or a built-in opposite already keep these apart
        only_first, only_second = first.words - second.words, second.words - first.words
        if len(only_first) == 1 and len(only_second) == 1:
            x, y = sorted((*only_first, *only_second))
            seen[(x, y)] = seen.get((x, y), 0) + 1
    return frozenset(pair for pair, n in seen.items() if n >= min_seen)
