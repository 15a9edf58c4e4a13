"""sync_prices: a prices file (JSON catalogue or CSV) is diffed against the providers' prices, then applied."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.audit.models import AuditEvent
from apps.core.catalog import CATALOG, CATALOG_PATH, CONTEXT_WINDOW, MAX_OUTPUT_TOKENS
from apps.providers.models import Price
from tests.factories import tenant_make

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = StringIO()
    call_command("sync_prices", *args, stdout=out)
    return out.getvalue()


def test_every_catalogue_model_has_a_context_window_and_a_max_output() -> None:
    for model, entry in CATALOG.items():
        assert CONTEXT_WINDOW[model] > 0, model
        assert entry.max_output == 0 or MAX_OUTPUT_TOKENS[model] == entry.max_output <= entry.context_window


def test_the_shipped_catalogue_changes_nothing_for_a_seeded_provider() -> None:
    tenant = tenant_make()
    out = _run(str(CATALOG_PATH), "--provider", str(tenant.provider.id))
    assert "0 model(s) to change" in out and "Nothing written" in out


def test_json_diff_then_apply_writes_new_rows_and_audits_them(tmp_path: Path) -> None:
    tenant = tenant_make()
    doc = json.loads(CATALOG_PATH.read_text())
    doc["effective_from"] = "2030-01-01"
    doc["models"]["gpt-4o"]["standard"]["output"] = "9.00"
    doc["models"]["gpt-9"] = {"context_window": 1000, "max_output": 100, "standard": {"input": "1", "output": "2"}}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(doc))
    before = Price.objects.count()

    out = _run(str(path), "--provider", str(tenant.provider.id))
    assert "2 model(s) to change" in out and "output_per_mtok: 10.000000 -> 9.00" in out and "new      gpt-9" in out
    assert Price.objects.count() == before  # a diff writes nothing

    out = _run(str(path), "--provider", str(tenant.provider.id), "--apply")
    assert "applied: 2 price row(s) from 2030-01-01" in out
    new = Price.objects.get(provider=tenant.provider, model="gpt-4o", effective_from=dt.date(2030, 1, 1))
    assert new.output_per_mtok == Decimal("9.00") and new.priority_output_per_mtok == Decimal("17.00")
    assert Price.objects.filter(provider=tenant.provider, model="gpt-4o").count() == 2  # the old price stays
    assert AuditEvent.objects.filter(object_type="price").count() >= 2
    assert "0 model(s) to change" in _run(str(path), "--provider", str(tenant.provider.id))


def test_csv_prices_with_tiers(tmp_path: Path) -> None:
    tenant = tenant_make()
    path = tmp_path / "prices.csv"
    path.write_text(
        "model,tier,input,cached_input,output,context_window,max_output\n"
        "gpt-new,standard,1.00,0.10,4.00,200000,50000\n"
        "gpt-new,flex,0.50,0.05,2.00,,\n"
    )
    _run(str(path), "--provider", str(tenant.provider.id), "--apply", "--effective-from", "2030-02-01")
    price = Price.objects.get(provider=tenant.provider, model="gpt-new")
    assert (price.flex_input_per_mtok, price.flex_output_per_mtok) == (Decimal("0.50"), Decimal("2.00"))
    assert price.priority_input_per_mtok is None  # not offered: billed at standard


def _with_long_context(rule: object) -> str:
    model = {"context_window": 1000, "max_output": 100, "standard": {"input": "1", "output": "2"}, "long_context": rule}
    return json.dumps({"effective_from": "2030-01-01", "models": {"m": model}})


def test_long_context_rates_are_applied_and_reach_the_gateways_prices(tmp_path: Path) -> None:
    tenant = tenant_make()
    doc = json.loads(CATALOG_PATH.read_text())
    doc["effective_from"] = "2030-01-01"
    doc["models"]["gpt-5.4"]["long_context"]["output_factor"] = "1.75"
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(doc))
    out = _run(str(path), "--provider", str(tenant.provider.id), "--apply")
    assert "long_context_output_factor: 1.500 -> 1.75" in out and "applied: 1 price row(s)" in out
    price = Price.objects.get(provider=tenant.provider, model="gpt-5.4", effective_from=dt.date(2030, 1, 1))
    long = price.long_context()
    assert long is not None and (long.above, long.input_factor, long.output_factor) == (272_000, 2, Decimal("1.75"))
    # A model without a long-context rate has none, in the row and the catalogue alike.
    assert CATALOG["gpt-5.4-mini"].long_context is None
    assert Price.objects.filter(provider=tenant.provider, model="gpt-5.4-mini").get().long_context() is None


def test_a_csv_silent_on_long_context_keeps_each_models_rate_and_one_that_names_it_sets_it(tmp_path: Path) -> None:
    tenant = tenant_make()
    provider = str(tenant.provider.id)
    seeded = Price.objects.get(provider=tenant.provider, model="gpt-5.4").long_context()
    assert seeded is not None  # the catalogue gives GPT-5.4 a long-context rate
    silent = tmp_path / "silent.csv"
    silent.write_text("model,tier,input,cached_input,output\ngpt-5.4,standard,3.00,0.30,16.00\n")
    out = _run(str(silent), "--provider", provider, "--apply", "--effective-from", "2030-03-01")
    assert "applied: 1 price row(s)" in out and "long_context" not in out
    changed = Price.objects.get(provider=tenant.provider, model="gpt-5.4", effective_from=dt.date(2030, 3, 1))
    assert changed.output_per_mtok == Decimal("16.00") and changed.long_context() == seeded

    named = tmp_path / "named.csv"
    named.write_text(
        "model,tier,input,cached_input,output,long_context_above,long_context_input_factor,long_context_output_factor\n"
        "gpt-5.4,standard,3.00,0.30,16.00,300000,2.5,1.25\n"
        "gpt-5.4-mini,standard,0.80,0.08,4.80,,,\n"
    )
    out = _run(str(named), "--provider", provider, "--apply", "--effective-from", "2030-04-01")
    assert "long_context_above_tokens: 272000 -> 300000" in out
    renamed = Price.objects.get(provider=tenant.provider, model="gpt-5.4", effective_from=dt.date(2030, 4, 1))
    long = renamed.long_context()
    assert long is not None and (long.above, long.input_factor, long.output_factor) == (300_000, 2.5, Decimal("1.25"))
    # A file that has the columns and leaves them empty for a model says it has no long-context rate.
    mini = Price.objects.get(provider=tenant.provider, model="gpt-5.4-mini", effective_from=dt.date(2030, 4, 1))
    assert mini.long_context() is None


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("p.json", "{not json"),
        ("p.json", '{"effective_from": "2030-01-01", "models": {"m": {"standard": {"input": "-1"}}}}'),
        ("p.json", '{"effective_from": "soon", "models": {}}'),
        ("p.json", '{"effective_from": "2030-01-01", "models": {"m": {"context_window": 1, "max_output": 1}}}'),
        ("p.json", _with_long_context({"above_input_tokens": 272000, "input_factor": "0.5", "output_factor": "1"})),
        ("p.json", _with_long_context({"above_input_tokens": -1, "input_factor": "2", "output_factor": "1.5"})),
        ("p.json", _with_long_context({"above_input_tokens": 272000, "input_factor": "NaN", "output_factor": "1"})),
        ("p.json", _with_long_context({"above_input_tokens": 272000, "input_factor": "2"})),
        ("p.json", _with_long_context("x2")),
        ("p.csv", "model,tier,input,output\nm,standard,NaN,1\n"),
        ("p.csv", "model,tier,input,output\n,standard,1,1\n"),
        ("p.csv", "model,tier,input,output,long_context_above,long_context_input_factor\nm,standard,1,1,1000,2\n"),
        (
            "p.csv",
            "model,tier,input,output,long_context_above,long_context_input_factor,long_context_output_factor\n"
            "m,standard,1,1,lots,2,1.5\n",
        ),
        (
            "p.csv",
            "model,tier,input,output,long_context_above,long_context_input_factor,long_context_output_factor\n"
            "m,standard,1,1,1000,0.5,1.5\n",
        ),
    ],
)
def test_garbage_files_are_refused_with_a_reason_and_nothing_written(tmp_path: Path, name: str, content: str) -> None:
    tenant_make()
    path = tmp_path / name
    path.write_text(content)
    before = Price.objects.count()
    with pytest.raises(CommandError):
        _run(str(path), "--apply")
    assert Price.objects.count() == before
