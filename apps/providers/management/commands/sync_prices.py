"""``manage.py sync_prices FILE``: compare a prices file with the providers' prices, then (``--apply``) write it.

FILE is a catalogue in ``apps/core/data/catalog.json``'s format, or a CSV with the
columns ``model,tier,input,cached_input,output`` (one line per model and tier; tier
is standard, batch, flex or priority) plus optional ``context_window,max_output``,
``reasoning`` and the long-context rate ``long_context_above,long_context_input_factor,
long_context_output_factor`` (all three on a line of the model, or none). A CSV without
the long-context columns says nothing about those rates: each model keeps the one its
provider's current price has. Without ``--apply`` it only shows the diff. Applied prices
are new rows effective from ``--effective-from`` (default: the file's date, else today),
so earlier ledger rows keep the prices they were billed at.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.context import audited_command
from apps.core.catalog import CatalogError, ModelEntry, parse_catalog
from apps.providers.models import Provider, ProviderKind
from apps.providers.services import prices_diff, prices_in_effect, prices_sync

LONG_CONTEXT_CSV = {
    "long_context_above": "above_input_tokens",
    "long_context_input_factor": "input_factor",
    "long_context_output_factor": "output_factor",
}


@dataclasses.dataclass(frozen=True)
class PricesFile:
    effective_from: dt.date | None
    catalog: dict[str, ModelEntry]
    # False for a CSV without the long-context columns: the file is silent on them, so they are kept.
    speaks_of_long_context: bool = True


def read_prices(path: Path) -> PricesFile:
    """The catalogue in a JSON or CSV prices file; ``CatalogError`` says what is wrong and where."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            return PricesFile(*parse_catalog(json.loads(text)))
        except json.JSONDecodeError as exc:
            raise CatalogError(f"not JSON: {exc}") from None
    models: dict[str, dict[str, Any]] = {}
    reader = csv.DictReader(text.splitlines())
    for number, line in enumerate(reader, start=2):
        model, tier = (line.get("model") or "").strip(), (line.get("tier") or "standard").strip()
        if not model:
            raise CatalogError(f"line {number}: no model")
        entry = models.setdefault(model, {"context_window": 0, "max_output": 0})
        for limit in ("context_window", "max_output"):
            if (line.get(limit) or "").strip():
                try:
                    entry[limit] = int(line[limit])
                except ValueError:
                    raise CatalogError(f"line {number}: {limit} is not a whole number") from None
        if (line.get("reasoning") or "").strip():
            entry["reasoning"] = line["reasoning"].strip()
        given = {key: (line.get(column) or "").strip() for column, key in LONG_CONTEXT_CSV.items()}
        if any(given.values()):
            if not all(given.values()):
                raise CatalogError(f"line {number}: a long-context rate needs all of {', '.join(LONG_CONTEXT_CSV)}")
            try:
                above = int(given["above_input_tokens"])
            except ValueError:
                raise CatalogError(f"line {number}: long_context_above is not a whole number") from None
            entry["long_context"] = {**given, "above_input_tokens": above}
        entry[tier] = {name: (line.get(name) or "").strip() or None for name in ("input", "cached_input", "output")}
        entry[tier] = {name: value for name, value in entry[tier].items() if value is not None}
    _date, catalog = parse_catalog({"effective_from": dt.date.today().isoformat(), "models": models})
    speaks = any(column in (reader.fieldnames or ()) for column in LONG_CONTEXT_CSV)
    return PricesFile(None, catalog, speaks_of_long_context=speaks)


def keeping_long_context(provider: Provider, catalog: dict[str, ModelEntry], on: dt.date) -> dict[str, ModelEntry]:
    """``catalog`` with each model's long-context rate as ``provider``'s price in effect ``on`` has it (for a
    file that does not speak of those rates: applying it must not drop them)."""
    kept = dict(catalog)
    for model, price in prices_in_effect(provider=provider, on=on, models=list(catalog)).items():
        kept[model] = dataclasses.replace(catalog[model], long_context=price.long_context())
    return kept


class Command(BaseCommand):
    help = "Show how a prices file (JSON catalogue or CSV) differs from the providers' prices; --apply writes it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--provider", type=int, action="append", help="Provider id (repeatable); "
                            "default: every OpenAI and simulated provider")  # fmt: skip
        parser.add_argument("--effective-from", type=dt.date.fromisoformat, default=None)
        parser.add_argument("--apply", action="store_true", help="Write the new prices (else only show the diff)")

    @audited_command
    def handle(self, *args: Any, **options: Any) -> None:
        try:
            prices_file = read_prices(options["file"])
        except (OSError, CatalogError) as exc:
            raise CommandError(f"{options['file']}: {exc}") from None
        effective_from = options["effective_from"] or prices_file.effective_from or dt.date.today()
        providers = Provider.objects.order_by("id")
        if options["provider"]:
            providers = providers.filter(id__in=options["provider"])
        else:
            providers = providers.filter(kind__in=[ProviderKind.OPENAI, ProviderKind.SIMULATED])
        for provider in providers:
            catalog = prices_file.catalog
            if not prices_file.speaks_of_long_context:
                catalog = keeping_long_context(provider, catalog, effective_from)
            changes = prices_diff(provider=provider, catalog=catalog, on=effective_from)
            self.stdout.write(f"{provider.name} (#{provider.id}): {len(changes)} model(s) to change")
            for model, kind, columns in changes:
                self.stdout.write(f"  {kind:8} {model}")
                for column, (now, then) in columns.items():
                    self.stdout.write(f"      {column}: {now} -> {then}")
            if options["apply"] and changes:
                written = prices_sync(provider=provider, catalog=catalog, effective_from=effective_from)
                self.stdout.write(f"  applied: {written} price row(s) from {effective_from}")
        if not options["apply"]:
            self.stdout.write("Nothing written (run again with --apply to write these prices).")
