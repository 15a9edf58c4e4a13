"""Replay a labelled dataset through a routing rule and compare it with an all-strong baseline."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.routing.evaluation import evaluate, report, rule_targets
from apps.routing.models import RoutingRule, RuleAction
from apps.routing.services import targets_parse


class Command(BaseCommand):
    help = (
        "Send every example of DATASET.jsonl ({'messages': [...], 'expected': '...'} per line) through the rule "
        "and to the baseline model; print accuracy, cost and escalation rate side by side."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset", type=Path)
        parser.add_argument("--rule", type=int, required=True, help="Routing rule id")
        parser.add_argument(
            "--baseline",
            help="Model to compare with, as on the rule form ('gpt-4o @ openai'); defaults to a cascade's strong model",
        )
        parser.add_argument("--limit", type=int, help="Only the first N examples")
        parser.add_argument("--seed", type=int, default=0, help="Seed for split draws")

    def handle(self, *args: Any, **options: Any) -> None:
        # The SDK's HTTP client logs every request at INFO; the report is what matters here.
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
        rule = RoutingRule.objects.select_related("project").filter(pk=options["rule"]).first()
        if rule is None:
            raise CommandError(f"No routing rule {options['rule']}.")
        examples = list(_read(options["dataset"], options["limit"]))
        if options["baseline"]:
            try:
                baseline = targets_parse(project=rule.project, text=options["baseline"])
            except ValidationError as exc:
                raise CommandError(f"--baseline: {' '.join(exc.messages)}") from None
            if len(baseline) != 1:
                raise CommandError("--baseline names one model.")
        elif rule.action == RuleAction.CASCADE:
            baseline = rule_targets(rule)[1:2]
        else:
            raise CommandError("Name the model to compare with: --baseline 'gpt-4o @ provider'.")
        if rule.action == RuleAction.CASCADE and len(rule_targets(rule)) != 2:
            raise CommandError("This cascade rule does not have its two models.")
        result = evaluate(rule=rule, baseline=baseline[0], examples=examples, seed=options["seed"])
        for line in report(result):
            self.stdout.write(line)


def _read(path: Path, limit: int | None) -> list[dict[str, Any]]:
    if not path.exists():
        raise CommandError(f"{path} does not exist.")
    examples = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CommandError(f"{path}:{number}: not JSON ({exc.msg}).") from None
            if (
                not isinstance(example, dict)
                or not isinstance(example.get("messages"), list)
                or "expected" not in example
            ):
                raise CommandError(f"{path}:{number}: needs 'messages' (a list) and 'expected'.")
            examples.append(example)
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise CommandError(f"{path} has no examples.")
    return examples
