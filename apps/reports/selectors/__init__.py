"""Reads for finance: the monthly report, and the rows of every CSV export.

Every read takes ``projects``, a queryset of the projects the caller may see
inside one organisation (``visible_projects``), and filters by it as a
subquery, so scoping never costs an extra query and never loads ids.
Time ranges are ``since`` inclusive, ``until`` exclusive, in UTC.

By sub-domain: ``monthly`` (the report page), ``rows`` (ledger and roll-up
rows), ``focus`` (the FOCUS file) and ``exports`` (what an export asks for).
"""

from __future__ import annotations

from apps.reports.selectors.exports import ExportQuery, export_rows
from apps.reports.selectors.focus import FOCUS_COLUMNS, allocate
from apps.reports.selectors.monthly import month_bounds, recent_export_jobs, spend_report, visible_projects
from apps.reports.selectors.rows import BUCKETS, GROUPINGS

__all__ = [
    "BUCKETS",
    "FOCUS_COLUMNS",
    "GROUPINGS",
    "ExportQuery",
    "allocate",
    "export_rows",
    "month_bounds",
    "recent_export_jobs",
    "spend_report",
    "visible_projects",
]
