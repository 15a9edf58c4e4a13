"""The example Grafana dashboard queries only metrics we export, under the names Prometheus gives them."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import apps.gateway.metrics  # noqa: F401 (declares the gateway's metrics)
import costcontrol.celery  # noqa: F401 (declares the task failure counter)
from apps.ledger.models import RollupWatermark
from costcontrol.metrics import ControlPlaneCollector

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "costcontrol.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


@pytest.mark.django_db
def test_every_query_names_an_exported_metric() -> None:
    RollupWatermark.objects.create(ingested_before=dt.datetime.now(dt.UTC))
    families = [*REGISTRY.collect(), *ControlPlaneCollector().collect()]
    exported = {
        family.name + suffix
        for family in families
        if family.name.startswith("costcontrol_")
        for suffix in SUFFIXES.get(family.type, ("",))
    }
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {name for query in queries for name in re.findall(r"\bcostcontrol_[a-z_]+", query)}
    assert named and named <= exported, named - exported
    # Every control-plane figure the issue names has a panel.
    for wanted in (
        "costcontrol_celery_queue_length",
        "costcontrol_rollup_lag_seconds",
        "costcontrol_stream_dead_letters",
    ):
        assert wanted in named
