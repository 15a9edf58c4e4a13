"""Writes for budgets, rate limits, channels and alerts, and the periodic checks."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record, audit_saved, audit_snapshot, audit_stored
from apps.budgets.models import (
    Alert,
    AlertDelivery,
    AlertKind,
    AnomalyRule,
    Budget,
    BudgetMode,
    BudgetPeriod,
    BudgetPeriodRecord,
    ChannelKind,
    DeliveryStatus,
    NotificationChannel,
    RateLimit,
)
from apps.budgets.selectors import budget_ledger_filter, budget_spent_usd, budget_status
from apps.core import names
from apps.core.egress import url_origin
from apps.core.money import usd
from apps.core.periods import period_bounds
from apps.keys.models import ApiKey
from apps.ledger.models import HourlyRollup, LedgerEntry
from apps.tenancy.models import Organization, Project, Team
from costcontrol.egress import egress_check, egress_http_client

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-CostControl-Signature"
TIMESTAMP_HEADER = "X-CostControl-Timestamp"
ANOMALY_WINDOW = dt.timedelta(minutes=15)
ANOMALY_BASELINE = dt.timedelta(hours=24)
# A rate is only compared with a baseline that means something: a slice needs this many requests in
# its baseline window, and its first traffic at least this long before the window, before a jump in
# its rate is news. A new project's (or feature's) first burst is its baseline starting, not a spike.
ANOMALY_MIN_BASELINE_REQUESTS = 50
ANOMALY_MIN_HISTORY = dt.timedelta(hours=6)
# The error code of a request a hard budget refused (apps.enforcement.replies.budget_exhausted).
BUDGET_REFUSED_CODE = "insufficient_quota"


def budget_create(
    *,
    organization: Organization,
    name: str,
    scope: str,
    amount_usd: Decimal,
    period: str = BudgetPeriod.MONTHLY,
    timezone_name: str = "UTC",
    mode: str = "hard",
    alert_thresholds: list[int] | None = None,
    team: Team | None = None,
    project: Project | None = None,
    api_key: ApiKey | None = None,
    feature: str = "",
    end_user: str = "",
    starts_at: dt.datetime | None = None,
) -> Budget:
    for ref in (team, project):
        if ref is not None and ref.organization_id != organization.id:
            raise ValidationError("That team or project belongs to another organisation.")
    if api_key is not None and api_key.project.organization_id != organization.id:
        raise ValidationError("That key belongs to another organisation.")
    budget = Budget(
        organization=organization,
        name=name,
        scope=scope,
        amount_usd=amount_usd,
        period=period,
        timezone=timezone_name,
        mode=mode,
        alert_thresholds=[50, 80, 100] if alert_thresholds is None else sorted(set(alert_thresholds)),
        team=team,
        project=project,
        api_key=api_key,
        feature=feature,
        end_user=end_user,
        starts_at=starts_at,
    )
    budget.full_clean()
    with transaction.atomic():
        budget.save()
        audit_record(action=AuditAction.CREATE, obj=budget, after=audit_snapshot(budget))
    return budget


# What a budget update may change; the organisation never changes.
BUDGET_FIELDS = frozenset(
    {"name", "scope", "team", "project", "api_key", "feature", "end_user", "amount_usd", "period", "timezone",
     "starts_at", "mode", "alert_thresholds", "is_active"}
)  # fmt: skip


@transaction.atomic
def budget_update(*, budget: Budget, **changes: Any) -> Budget:
    """Change some of a budget's fields (``BUDGET_FIELDS``), checked as a whole before saving."""
    unknown = set(changes) - BUDGET_FIELDS
    if unknown:
        raise ValidationError(f"A budget has no changeable field {', '.join(sorted(unknown))}.")
    before = audit_stored(budget)
    for field, value in changes.items():
        setattr(budget, field, value)
    for ref in (budget.team, budget.project):
        if ref is not None and ref.organization_id != budget.organization_id:
            raise ValidationError("That team or project belongs to another organisation.")
    if budget.api_key is not None and budget.api_key.project.organization_id != budget.organization_id:
        raise ValidationError("That key belongs to another organisation.")
    if "alert_thresholds" in changes:
        budget.alert_thresholds = sorted(set(budget.alert_thresholds))
    budget.full_clean()
    budget.save()
    audit_record(action=AuditAction.UPDATE, obj=budget, before=before, after=audit_snapshot(budget))
    return budget


@transaction.atomic
def budget_delete(*, budget: Budget) -> None:
    audit_record(action=AuditAction.DELETE, obj=budget, before=audit_snapshot(budget))
    budget.delete()


def rate_limit_set(
    *,
    project: Project,
    api_key: ApiKey | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_concurrent: int | None = None,
) -> RateLimit:
    if api_key is not None and api_key.project_id != project.id:
        raise ValidationError("That key belongs to another project.")
    with transaction.atomic():
        limit = RateLimit.objects.select_for_update().filter(project=project, api_key=api_key).first()
        before = audit_stored(limit)
        limit = limit or RateLimit(project=project, api_key=api_key)
        limit.organization_id = project.organization_id
        limit.requests_per_minute = requests_per_minute
        limit.tokens_per_minute = tokens_per_minute
        limit.max_concurrent = max_concurrent
        limit.full_clean()
        limit.save()
        audit_saved(obj=limit, before=before)
    return limit


@transaction.atomic
def rate_limit_delete(*, limit: RateLimit) -> None:
    audit_record(action=AuditAction.DELETE, obj=limit, before=audit_snapshot(limit))
    limit.delete()


def _check_channel_target(channel: NotificationChannel) -> None:
    """Webhook URLs pass the egress policy (they are fetched from inside our network)."""
    if channel.kind in (ChannelKind.SLACK, ChannelKind.WEBHOOK):
        try:
            egress_check(channel.target)
        except ValidationError as exc:
            raise ValidationError({"target": exc.messages}) from None


def channel_create(
    *, organization: Organization, name: str, kind: str, target: str, secret: str = ""
) -> NotificationChannel:
    channel = NotificationChannel(organization=organization, name=name, kind=kind, target=target.strip())
    channel.secret = secret
    channel.full_clean()
    _check_channel_target(channel)
    with transaction.atomic():
        channel.save()
        audit_record(action=AuditAction.CREATE, obj=channel, after=audit_snapshot(channel))
    return channel


def channel_update(
    *, channel: NotificationChannel, name: str, target: str, secret: str | None, is_active: bool
) -> NotificationChannel:
    """Change a channel; ``secret=None`` keeps the stored signing secret.

    Like a provider's, a webhook's secret is bound to its URL's origin: pointing a channel that has
    one at another scheme, host or port without entering the secret again is refused.
    """
    target = target.strip()
    before = audit_snapshot(channel)
    moved = target != channel.target
    if moved and secret is None and channel.has_secret and url_origin(target) != url_origin(channel.target):
        raise ValidationError({"secret": "The URL now points at another host: enter the signing secret again for it."})
    channel.name, channel.target, channel.is_active = name, target, is_active
    if secret is not None:
        channel.secret = secret
    channel.full_clean()
    if moved:
        _check_channel_target(channel)
    with transaction.atomic():
        channel.save()
        audit_record(action=AuditAction.UPDATE, obj=channel, before=before, after=audit_snapshot(channel))
    return channel


@transaction.atomic
def channel_delete(*, channel: NotificationChannel) -> None:
    """Delete a channel; alerts stay, its deliveries (sent or pending) go with it."""
    audit_record(action=AuditAction.DELETE, obj=channel, before=audit_snapshot(channel))
    channel.delete()


# --- alerts -----------------------------------------------------------------


def alert_raise(
    *,
    organization_id: int,
    kind: str,
    dedup_key: str,
    title: str,
    message: str,
    link: str = "",
    project_id: int | None = None,
    budget: Budget | None = None,
    data: dict[str, Any] | None = None,
) -> tuple[Alert, bool]:
    """Record an alert once per ``dedup_key`` and queue one delivery per active channel."""
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                organization_id=organization_id,
                kind=kind,
                dedup_key=dedup_key,
                title=title,
                message=message,
                link=link,
                project_id=project_id,
                budget=budget,
                data=data or {},
            )
            deliveries = AlertDelivery.objects.bulk_create(
                AlertDelivery(alert=alert, channel=channel)
                for channel in NotificationChannel.objects.filter(organization_id=organization_id, is_active=True)
            )
            ids = [d.id for d in deliveries]
            transaction.on_commit(lambda: _enqueue_deliveries(ids))
    except IntegrityError:
        return Alert.objects.get(dedup_key=dedup_key), False
    return alert, True


def alert_acknowledge(*, alert: Alert, user: User) -> Alert:
    """Mark ``alert`` seen by ``user``; acknowledging twice keeps the first acknowledgement."""
    updated = Alert.objects.filter(pk=alert.pk, acknowledged_at__isnull=True).update(
        acknowledged_at=timezone.now(), acknowledged_by=user
    )
    if updated:
        alert.refresh_from_db(fields=["acknowledged_at", "acknowledged_by"])
    return alert


def dead_letters_alert(*, organization_id: int, stream: str, count: int, error: str, day: dt.date) -> Alert | None:
    """Alert an organisation (once a day) that ``count`` of its events could not be stored; later ones add up.

    The events are kept in ``<stream>:dead`` in Redis for an operator to inspect; the alert
    carries the running count per day (``data["count"]``) and the last error.
    """
    if not Organization.objects.filter(id=organization_id).exists():
        return None  # the organisation is gone: nobody left to tell
    kind = stream.rsplit(":", 1)[-1]
    alert, new = alert_raise(
        organization_id=organization_id,
        kind=AlertKind.DEAD_LETTER,
        dedup_key=f"dead-letter:{organization_id}:{day.isoformat()}",
        title=f"Some {kind} events could not be stored ({day.isoformat()})",
        message=(
            "The ingest could not store some of this organisation's events; they are kept in the "
            f"dead-letter stream {names.dead_letters(stream)} for an operator to inspect. Last error: {error[:300]}"
        ),
        link="/ledger/",
        data={"count": count, "stream": stream, "last_error": error[:300]},
    )
    if not new:
        with transaction.atomic():
            alert = Alert.objects.select_for_update().get(pk=alert.pk)
            alert.data = {**alert.data, "count": int(alert.data.get("count") or 0) + count, "last_error": error[:300]}
            alert.save(update_fields=["data"])
    return alert


def _enqueue_deliveries(delivery_ids: list[int]) -> None:
    from apps.budgets.tasks import alert_deliver_task

    for delivery_id in delivery_ids:
        try:
            alert_deliver_task.delay(delivery_id)
        except Exception:
            # The broker is down: the periodic sweep (alerts_redeliver) picks pending ones up.
            logger.exception("could not queue delivery %s", delivery_id)


def alert_payload(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "kind": alert.kind,
        "title": alert.title,
        "message": alert.message,
        "link": alert.link,
        "organization_id": alert.organization_id,
        "project_id": alert.project_id,
        "created_at": alert.created_at.isoformat(),
        "data": alert.data,
    }


def webhook_signature(*, secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``"{timestamp}.{body}"`` — receivers recompute and compare."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _post_json(url: str, body: bytes, headers: dict[str, str]) -> None:
    """POST to a tenant-set URL: checked addresses only, and a redirect is a failure, never followed."""
    with egress_http_client(timeout=10) as client:
        response = client.post(url, content=body, headers={"Content-Type": "application/json", **headers})
    if response.status_code >= 300:
        raise RuntimeError(f"webhook answered {response.status_code}")


def alert_deliver(*, delivery: AlertDelivery) -> AlertDelivery:
    """Send one alert to one channel; raises on failure so the task can retry."""
    if delivery.status == DeliveryStatus.SENT:
        return delivery
    alert, channel = delivery.alert, delivery.channel
    delivery.attempts += 1
    try:
        if channel.kind == ChannelKind.SLACK:
            text = f"*{alert.title}*\n{alert.message}" + (
                f"\n<{alert.link}|Open the ledger slice>" if alert.link else ""
            )
            _post_json(channel.target, json.dumps({"text": text}).encode(), {})
        elif channel.kind == ChannelKind.WEBHOOK:
            body = json.dumps(alert_payload(alert), separators=(",", ":")).encode()
            timestamp = str(int(time.time()))
            headers = {TIMESTAMP_HEADER: timestamp}
            if channel.secret:
                headers[SIGNATURE_HEADER] = webhook_signature(secret=channel.secret, timestamp=timestamp, body=body)
            _post_json(channel.target, body, headers)
        else:
            recipients = [addr.strip() for addr in channel.target.split(",") if addr.strip()]
            send_mail(alert.title, f"{alert.message}\n\n{alert.link}", None, recipients)
    except Exception as exc:
        delivery.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        delivery.status = DeliveryStatus.FAILED
        delivery.save(update_fields=["attempts", "last_error", "status"])
        raise
    delivery.status = DeliveryStatus.SENT
    delivery.delivered_at = timezone.now()
    delivery.last_error = ""
    delivery.save(update_fields=["attempts", "last_error", "status", "delivered_at"])
    return delivery


# --- periodic checks ------------------------------------------------------------


def budgets_check_thresholds(*, now: dt.datetime | None = None) -> int:
    """Raise one alert per budget, period and crossed threshold; returns alerts created."""
    created = 0
    for budget in Budget.objects.filter(is_active=True).select_related("organization"):
        status = budget_status(budget=budget, now=now)
        for threshold in budget.alert_thresholds:
            if status.percent_used < threshold:
                continue
            _alert, new = alert_raise(
                organization_id=budget.organization_id,
                kind=AlertKind.BUDGET_THRESHOLD,
                dedup_key=f"budget:{budget.id}:{status.period_start:%Y%m%d%H%M}:{threshold}",
                title=f"Budget '{budget.name}' reached {threshold}%",
                message=(
                    f"{usd(status.spent_usd, 4)} of {usd(budget.amount_usd, 2)} spent this {budget.period} period "
                    f"({status.percent_used:.1f}%). Burn rate {usd(status.burn_usd_per_day, 4)}/day"
                    + (f", projected {usd(status.projected_usd, 4)} at period end." if status.projected_usd else ".")
                ),
                link=f"/budgets/{budget.id}/",
                project_id=budget.project_id,
                budget=budget,
                data={"threshold": threshold, "spent_usd": str(status.spent_usd), "mode": budget.mode},
            )
            created += new
        if budget.mode == BudgetMode.HARD:
            created += _blocking_alert(budget, status.period_start, status.spent_usd)
        if budget.mode == "shadow":
            blocked = LedgerEntry.objects.filter(
                budget_ledger_filter(budget=budget),
                created_at__gte=status.period_start,
                decision__would_block__contains=[budget.id],
            ).count()
            if blocked:
                _alert, new = alert_raise(
                    organization_id=budget.organization_id,
                    kind=AlertKind.WOULD_BLOCK,
                    dedup_key=f"shadow:{budget.id}:{status.period_start:%Y%m%d%H%M}",
                    title=f"Shadow budget '{budget.name}' would have blocked requests",
                    message=f"{blocked} request(s) this period would have been refused in hard mode.",
                    link=f"/budgets/{budget.id}/",
                    project_id=budget.project_id,
                    budget=budget,
                    data={"would_block": blocked},
                )
                created += new
    return created


def _blocking_alert(budget: Budget, period_start: dt.datetime, spent_usd: Decimal) -> int:
    """Alert once per period when a hard budget refuses requests; returns 1 if the alert is new.

    A hard budget refuses a request whose worst case no longer fits, which is usually before its
    spend reaches 100%, so a threshold alert alone never says requests are being turned away.
    """
    refused = LedgerEntry.objects.filter(
        budget_ledger_filter(budget=budget), created_at__gte=period_start, error_code=BUDGET_REFUSED_CODE
    )
    count = refused.count()
    if not count:
        return 0
    _alert, new = alert_raise(
        organization_id=budget.organization_id,
        kind=AlertKind.BUDGET_BLOCKING,
        dedup_key=f"blocking:{budget.id}:{period_start:%Y%m%d%H%M}",
        title=f"Budget '{budget.name}' is blocking requests",
        message=(
            f"The hard budget refused {count} request(s) this {budget.period} period: "
            f"{usd(spent_usd, 4)} of {usd(budget.amount_usd, 2)} spent. Raise the amount, or switch it to soft "
            "mode, to let requests through."
        ),
        link=f"/ledger/?status=error&since={period_start:%Y-%m-%d}",
        project_id=budget.project_id,
        budget=budget,
        data={"refused": count, "spent_usd": str(spent_usd), "mode": budget.mode},
    )
    return int(new)


def budget_periods_record(*, now: dt.datetime | None = None) -> int:
    """Keep the history: close last period's record and update the current one. Idempotent."""
    now = now or timezone.now()
    written = 0
    for budget in Budget.objects.exclude(period=BudgetPeriod.ONE_OFF):
        start, end = period_bounds(budget.period, budget.timezone, now)
        previous_start, previous_end = period_bounds(budget.period, budget.timezone, start - dt.timedelta(seconds=1))
        for since, until, closed in ((previous_start, previous_end, True), (start, end, False)):
            BudgetPeriodRecord.objects.update_or_create(
                budget=budget,
                period_start=since,
                defaults={
                    "period_end": until,
                    "limit_usd": budget.amount_usd,
                    "spent_usd": budget_spent_usd(budget=budget, since=since, until=until),
                    "closed": closed,
                },
            )
            written += 1
    return written


def anomalies_detect(*, now: dt.datetime | None = None) -> int:
    """Alert when a project's (or feature's) spend or token rate jumps past its trailing baseline.

    Recent rate: the last 15 minutes of the ledger. Baseline: the 24 hours before
    that, from the hourly roll-ups. One alert per project/feature per hour. A slice
    with too thin a baseline (fewer than ``ANOMALY_MIN_BASELINE_REQUESTS`` requests,
    or traffic for less than ``ANOMALY_MIN_HISTORY``) is not judged at all.
    """
    now = now or timezone.now()
    window_start = now - ANOMALY_WINDOW
    baseline_start = window_start - ANOMALY_BASELINE
    hours = Decimal(ANOMALY_BASELINE.total_seconds()) / 3600
    window_hours = Decimal(ANOMALY_WINDOW.total_seconds()) / 3600
    rules = {(r.organization_id, r.project_id): r for r in AnomalyRule.objects.all()}

    recent = list(
        LedgerEntry.objects.filter(created_at__gte=window_start, created_at__lt=now)
        .values("organization_id", "project_id", "feature")
        .annotate(cost=Sum("cost"), tokens=Sum("prompt_tokens") + Sum("completion_tokens"), n=Count("id"))
        .order_by()
    )
    baseline = {
        (row["project_id"], row["feature"]): row
        for row in HourlyRollup.objects.filter(hour__gte=baseline_start, hour__lt=window_start)
        .values("project_id", "feature")
        .annotate(cost=Sum("cost"), tokens=Sum("prompt_tokens") + Sum("completion_tokens"), n=Sum("requests"))
        .order_by()
    }
    # When each project and feature first had traffic (the whole roll-up history, one grouped query).
    first_seen = {
        (row["project_id"], row["feature"]): row["first"]
        for row in HourlyRollup.objects.filter(project_id__in={row["project_id"] for row in recent})
        .values("project_id", "feature")
        .annotate(first=Min("hour"))
        .order_by()
    }
    history_before = window_start - ANOMALY_MIN_HISTORY
    created = 0
    slices: dict[tuple[int, int, str], dict[str, Decimal]] = {}
    for row in recent:
        for feature in ("", row["feature"]) if row["feature"] else ("",):
            acc = slices.setdefault(
                (row["organization_id"], row["project_id"], feature), {"cost": Decimal(0), "tokens": Decimal(0)}
            )
            acc["cost"] += row["cost"] or 0
            acc["tokens"] += row["tokens"] or 0
    for (org_id, project_id, feature), acc in slices.items():
        rule = rules.get((org_id, project_id)) or rules.get((org_id, None))
        if rule is not None and not rule.enabled:
            continue
        multiple = rule.multiple if rule else Decimal(2)
        floor = rule.min_usd_per_hour if rule else Decimal("0.01")
        base: Mapping[str, Any] | None
        if feature:
            base = baseline.get((project_id, feature))
            first = first_seen.get((project_id, feature))
        else:
            base_rows = [v for (p, _f), v in baseline.items() if p == project_id]
            base = {"cost": sum((b["cost"] or 0 for b in base_rows), Decimal(0)),
                    "tokens": sum(b["tokens"] or 0 for b in base_rows),
                    "n": sum(b["n"] or 0 for b in base_rows)} if base_rows else None  # fmt: skip
            first = min((f for (p, _f), f in first_seen.items() if p == project_id), default=None)
        if base is None or (base["n"] or 0) < ANOMALY_MIN_BASELINE_REQUESTS or first is None or first > history_before:
            continue
        rate = acc["cost"] / window_hours
        base_rate = (Decimal(base["cost"] or 0) / hours) if base else Decimal(0)
        tokens_rate = acc["tokens"] / (window_hours * 60)
        base_tokens_rate = (Decimal(base["tokens"] or 0) / (hours * 60)) if base else Decimal(0)
        spend_spike = rate >= floor and rate > multiple * base_rate
        token_spike = rate >= floor and base_tokens_rate > 0 and tokens_rate > multiple * base_tokens_rate
        if not (spend_spike or token_spike):
            continue
        project = Project.objects.only("slug").get(id=project_id)
        what = f"feature '{feature}' in project {project.slug}" if feature else f"project {project.slug}"
        since = window_start.strftime("%Y-%m-%dT%H:%M")
        link = f"/ledger/?project={project.id}&since={since}" + (f"&feature={feature}" if feature else "")
        _alert, new = alert_raise(
            organization_id=org_id,
            kind=AlertKind.SPEND_ANOMALY,
            dedup_key=f"anomaly:{project_id}:{feature}:{now:%Y%m%d%H}",
            title=f"Spend rate spike: {what}",
            message=(
                f"{usd(rate, 4)}/hour over the last 15 minutes vs a 24-hour baseline of {usd(base_rate, 4)}/hour "
                f"({tokens_rate:.0f} vs {base_tokens_rate:.0f} tokens/min); alert threshold {multiple}x."
            ),
            link=link,
            project_id=project_id,
            data={"rate_usd_per_hour": str(rate), "baseline_usd_per_hour": str(base_rate), "feature": feature},
        )
        created += new
    return created


def alerts_redeliver() -> int:
    """Queue deliveries still pending or failed (fewer than 6 attempts); returns how many."""
    ids = list(
        AlertDelivery.objects.filter(
            Q(status=DeliveryStatus.PENDING) | Q(status=DeliveryStatus.FAILED), attempts__lt=6
        ).values_list("id", flat=True)[:500]
    )
    _enqueue_deliveries(ids)
    return len(ids)
