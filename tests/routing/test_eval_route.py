"""eval_route against the simulated upstream, checked against what the dataset's directives imply."""

from __future__ import annotations

import io
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.factories import Tenant
from tests.routing.helpers import rule_make

pytestmark = pytest.mark.django_db(transaction=True)

DATASET = Path(__file__).resolve().parents[2] / "apps" / "routing" / "data" / "triage.jsonl"


def _expected(limit: int, threshold: float) -> tuple[int, int, int]:
    """(right through the cascade, escalations, right with gpt-4o alone), from the directives themselves."""
    routed = escalated = strong = 0
    for line in DATASET.read_text().splitlines()[:limit]:
        example = json.loads(line)
        text = example["messages"][-1]["content"]
        cheap = re.search(r"gpt-4o-mini/answer=(\w+)", text)[1]  # type: ignore[index]
        confidence = float(re.search(r"gpt-4o-mini/confidence=([\d.]+)", text)[1])  # type: ignore[index]
        big = re.search(r"sim:gpt-4o/answer=(\w+)", text)[1]  # type: ignore[index]
        if confidence < threshold:
            escalated += 1
            routed += big == example["expected"]
        else:
            routed += cheap == example["expected"]
        strong += big == example["expected"]
    return routed, escalated, strong


def test_eval_route_reports_the_cascade_against_all_strong(tenant: Tenant) -> None:
    rule = rule_make(
        tenant, name="triage", action="cascade", primaries="gpt-4o-mini\ngpt-4o", cascade_threshold=Decimal("0.7")
    )
    out = io.StringIO()
    call_command("eval_route", str(DATASET), rule=rule.id, limit=120, stdout=out)
    report = out.getvalue()
    routed_right, escalations, strong_right = _expected(120, 0.7)

    through = re.search(r"through the rule\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)%\s+0", report)
    baseline = re.search(r"all gpt-4o\s+([\d.]+)%\s+([\d.]+)\s+—\s+0", report)
    assert through and baseline, report
    assert float(through[1]) == pytest.approx(100 * routed_right / 120, abs=0.05)
    assert float(through[3]) == pytest.approx(100 * escalations / 120, abs=0.05)
    assert float(baseline[1]) == pytest.approx(100 * strong_right / 120, abs=0.05)
    assert Decimal(through[2]) < Decimal(baseline[2])  # the cascade is cheaper than all-gpt-4o
    assert f"gpt-4o {escalations}, gpt-4o-mini {120 - escalations}" in report


def test_eval_route_refuses_bad_input(tenant: Tenant, tmp_path: Path) -> None:
    rule = rule_make(tenant, name="plain", primaries="gpt-4o-mini")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    with pytest.raises(CommandError, match="bad.jsonl:1: needs 'messages'"):
        call_command("eval_route", str(bad), rule=rule.id, baseline="gpt-4o")
    with pytest.raises(CommandError, match="--baseline"):
        call_command("eval_route", str(DATASET), rule=rule.id)
    with pytest.raises(CommandError, match="No routing rule 999999"):
        call_command("eval_route", str(DATASET), rule=999999)
