"""Which routing rules an earlier rule catches traffic from, read from the rules' conditions.

Rules are tried in position order and the first match decides, so an earlier rule whose conditions
are at least as wide as a later one's on every condition shadows it: the later rule never runs. A
regular expression is compared as text (whether one regex's language holds another's is not worth
deciding here): an earlier rule shadows a later one only with no regex or the same one. Rules that
only partly overlap are reported too, as the smaller warning they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class RuleConditions(Protocol):
    """What the comparison reads of a rule (read-only, so a model's fields fit)."""

    @property
    def id(self) -> int | None: ...

    @property
    def name(self) -> str: ...

    @property
    def is_active(self) -> bool: ...

    @property
    def match_models(self) -> list[str]: ...

    @property
    def match_features(self) -> list[str]: ...

    @property
    def match_end_users(self) -> list[str]: ...

    @property
    def match_api_key_id(self) -> int | None: ...

    @property
    def min_prompt_tokens(self) -> int | None: ...

    @property
    def max_prompt_tokens(self) -> int | None: ...

    @property
    def match_tools(self) -> str: ...

    @property
    def match_regex(self) -> str: ...


SHADOWED = "shadowed"
OVERLAPS = "overlaps"


@dataclass(frozen=True)
class Overlap:
    """``earlier`` catches all (``SHADOWED``) or some (``OVERLAPS``) of ``later``'s traffic."""

    later_id: int | None
    earlier_id: int | None
    earlier_name: str
    earlier_position: int  # 1-based, as the rule list numbers rules
    kind: str

    @property
    def message(self) -> str:
        if self.kind == SHADOWED:
            return (
                f"Never reached: rule #{self.earlier_position} “{self.earlier_name}” (id {self.earlier_id}) comes "
                "first and matches every request this rule matches. Move this rule above it, or narrow that one."
            )
        return (
            f"Overlaps rule #{self.earlier_position} “{self.earlier_name}” (id {self.earlier_id}): requests that "
            "match both go to that rule, which comes first."
        )


def _list_covers(wide: Sequence[str], narrow: Sequence[str]) -> bool:
    return not wide or (bool(narrow) and set(narrow) <= set(wide))


def _list_meets(a: Sequence[str], b: Sequence[str]) -> bool:
    return not a or not b or bool(set(a) & set(b))


def _range(rule: RuleConditions) -> tuple[int, float]:
    low = rule.min_prompt_tokens or 0
    return low, float("inf") if rule.max_prompt_tokens is None else rule.max_prompt_tokens


def covers(wide: RuleConditions, narrow: RuleConditions) -> bool:
    """Whether every request ``narrow`` matches is matched by ``wide`` too."""
    wide_low, wide_high = _range(wide)
    low, high = _range(narrow)
    return (
        _list_covers(wide.match_models, narrow.match_models)
        and _list_covers(wide.match_features, narrow.match_features)
        and _list_covers(wide.match_end_users, narrow.match_end_users)
        and (wide.match_api_key_id is None or wide.match_api_key_id == narrow.match_api_key_id)
        and wide_low <= low
        and high <= wide_high
        and (wide.match_tools == "any" or wide.match_tools == narrow.match_tools)
        and (not wide.match_regex or wide.match_regex == narrow.match_regex)
    )


def meets(a: RuleConditions, b: RuleConditions) -> bool:
    """Whether some request could match both (regexes assumed to meet)."""
    a_low, a_high = _range(a)
    b_low, b_high = _range(b)
    return (
        _list_meets(a.match_models, b.match_models)
        and _list_meets(a.match_features, b.match_features)
        and _list_meets(a.match_end_users, b.match_end_users)
        and (a.match_api_key_id is None or b.match_api_key_id is None or a.match_api_key_id == b.match_api_key_id)
        and max(a_low, b_low) <= min(a_high, b_high)
        and (a.match_tools == "any" or b.match_tools == "any" or a.match_tools == b.match_tools)
    )


def rule_overlaps(rules: Sequence[RuleConditions]) -> dict[int | None, list[Overlap]]:
    """For each active rule (by id), the earlier active rules that shadow or overlap it, in order.

    ``rules`` is in the order the gateway tries them; inactive rules neither shadow nor are reported.
    """
    found: dict[int | None, list[Overlap]] = {}
    for i, later in enumerate(rules):
        if not later.is_active:
            continue
        for position, earlier in enumerate(rules[:i], start=1):
            if not earlier.is_active:
                continue
            kind = SHADOWED if covers(earlier, later) else OVERLAPS if meets(earlier, later) else ""
            if kind:
                found.setdefault(later.id, []).append(
                    Overlap(
                        later_id=later.id,
                        earlier_id=earlier.id,
                        earlier_name=earlier.name,
                        earlier_position=position,
                        kind=kind,
                    )
                )
    return found
