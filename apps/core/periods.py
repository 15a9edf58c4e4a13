"""Calendar-aligned budget periods in the budget's own time zone.

Pure functions: the data plane and the control plane both use them,
so a period starts at the same instant everywhere.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import lru_cache

FOREVER = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


@lru_cache(maxsize=256)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def period_bounds(
    period: str, tz_name: str, at: dt.datetime, starts_at: dt.datetime | None = None
) -> tuple[dt.datetime, dt.datetime]:
    """The [start, end) of the period containing ``at``, as aware UTC datetimes."""
    if period == "one_off":
        return (starts_at or dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).astimezone(dt.UTC), FOREVER
    local = at.astimezone(_zone(tz_name))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start, end = midnight, midnight + dt.timedelta(days=1)
    elif period == "weekly":
        start = midnight - dt.timedelta(days=local.weekday())
        end = start + dt.timedelta(days=7)
    elif period == "monthly":
        start = midnight.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    # Re-localise: adding days across a DST change keeps the wall-clock midnight.
    zone = _zone(tz_name)
    start = start.replace(tzinfo=None).replace(tzinfo=zone)
    end = end.replace(tzinfo=None).replace(tzinfo=zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)
