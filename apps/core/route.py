"""The routing decision of one request, as data: how it was served, what was tried, what was noted.

The gateway fills a ``RouteDecision`` as the request passes its stages, sends
its ``text()`` as the ``X-Route`` header and writes both the text and its
``as_json()`` to the ledger. Everything that later asks what happened (the
saving lever of the roll-ups, a rule's escalations and fallbacks, a shadow
budget's would-be refusals) reads the JSON, never the text.

The text, part by part::

    direct | alias:NAME | cache:KIND | route:RULE:ACTION[:MODEL]   how it was served
    [:cheap] [:strong-only | :kept(WHY) | :escalated(WHY)]         a cascade's call and verdict
    [:attempt]                                                     a possibly billed attempt's own row
    [;limits-unchecked] [;would-block:budget:ID,...]               admission notes
    [;failed:MODEL@PROVIDER(OUTCOME)]... [;retries=N] [;unpriced]  upstream notes
    [;pruned:max_tokens(ASKED->CAP)] [;pruned:history(N->M)]        what a pruning policy trimmed
                                                                   (max_output_tokens on /v1/responses)

The JSON holds only what is set (``{"kind": "direct"}`` for the common case).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# How a request was served (``kind``).
DIRECT, ALIAS, RULE, CACHE = "direct", "alias", "rule", "cache"
# A cascade's verdict (``cascade``): only the strong model asked (not a chat request), the cheap answer
# kept, or escalated to the strong model.
STRONG_ONLY, KEPT, ESCALATED = "strong-only", "kept", "escalated"
# A ledger row that is not the request's answer (``part``): a cascade's escalated cheap call, an
# attempt the provider may bill although we gave up on it.
CHEAP, ATTEMPT = "cheap", "attempt"


@dataclass(frozen=True, slots=True)
class Tried:
    """A target that failed: its model, provider name and why (a status such as "503", "timeout",
    "unreachable", "circuit-open")."""

    model: str
    provider: str
    outcome: str


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a pruning policy trimmed: ``max_tokens`` or ``max_output_tokens`` (the cap asked for, 0 when none,
    and the one sent) or ``history`` (messages or input items asked with, and sent)."""

    what: str
    before: int
    after: int


@dataclass(slots=True)
class RouteDecision:
    kind: str = ""  # DIRECT, ALIAS, RULE or CACHE; "" while (or when) no route was chosen
    alias: str = ""  # the alias asked for
    rule_id: int | None = None
    action: str = ""  # the rule's action: route, split, cascade
    model: str = ""  # a split's drawn model
    cascade: str = ""  # STRONG_ONLY, KEPT, ESCALATED
    reason: str = ""  # the cascade verdict's why: "confidence=0.412<0.7", "no-logprobs", "new-label", …
    cache_hit: str = ""  # "exact" or "semantic"
    part: str = ""  # CHEAP or ATTEMPT on rows that are not the answer
    limits_unchecked: bool = False  # Redis was down and the gateway failed open
    would_block: tuple[int, ...] = ()  # shadow budgets that hard mode would have refused on
    tried: tuple[Tried, ...] = ()  # targets that failed, in the order they were tried
    retries: int = 0  # further attempts on the target that answered
    unpriced: bool = False  # the served model has no price: the row costs 0
    pruned: tuple[Pruned, ...] = ()  # what the feature's pruning policy trimmed before routing

    def variant(self, **changes: Any) -> RouteDecision:
        """A copy with ``changes`` (for the rows of a cascade's cheap call and of possibly billed attempts)."""
        return dataclasses.replace(self, **changes)

    def text(self) -> str:
        """What ``X-Route`` says (and the ledger's ``route`` column): see the module docstring."""
        kind = self.kind
        if kind == DIRECT:
            text = "direct"
        elif kind == ALIAS:
            text = "alias:" + self.alias
        elif kind == CACHE:
            text = "cache:" + self.cache_hit
        elif kind == RULE:
            text = f"route:{self.rule_id}:{self.action}"
            if self.model:
                text += ":" + self.model
        else:
            text = ""
        if self.part == CHEAP:
            text += ":cheap"
        if self.cascade == STRONG_ONLY:
            text += ":strong-only"
        elif self.cascade:
            text += f":{self.cascade}({self.reason})"
        if self.part == ATTEMPT:
            text += ":attempt"
        if self.limits_unchecked:
            text += ";limits-unchecked"
        if self.would_block:
            text += ";would-block:" + ",".join(f"budget:{budget}" for budget in self.would_block)
        for tried in self.tried:
            text += f";failed:{tried.model}@{tried.provider}({tried.outcome})"
        if self.retries:
            text += f";retries={self.retries}"
        if self.unpriced:
            text += ";unpriced"
        for pruned in self.pruned:
            text += f";pruned:{pruned.what}({pruned.before}->{pruned.after})"
        return text

    def as_json(self) -> dict[str, Any] | None:
        """The decision for the ledger's ``decision`` column: only what is set; None when no route was chosen."""
        if not self.kind:
            return None
        if self.kind == DIRECT and not (self.part or self.limits_unchecked or self.would_block or self.tried):
            if not (self.retries or self.unpriced or self.pruned):
                return {"kind": DIRECT}  # most requests
        data: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if value:
                if name in ("tried", "pruned"):
                    value = [dataclasses.asdict(item) for item in value]
                elif name == "would_block":
                    value = list(value)
                data[name] = value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RouteDecision:
        if not data:
            return cls()
        values = {name: data[name] for name in _FIELDS if name in data}
        values["tried"] = tuple(Tried(**t) for t in values.get("tried", ()))
        values["pruned"] = tuple(Pruned(**p) for p in values.get("pruned", ()))
        values["would_block"] = tuple(values.get("would_block", ()))
        return cls(**values)


_FIELDS = tuple(f.name for f in dataclasses.fields(RouteDecision))
