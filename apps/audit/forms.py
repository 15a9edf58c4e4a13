from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.utils import timezone

from apps.audit.models import AuditAction, ObjectType
from apps.audit.selectors import AuditFilters
from costcontrol.forms import DateInput


class AuditFilterForm(forms.Form):
    date_from = forms.DateField(required=False, widget=DateInput(), label="From")
    date_to = forms.DateField(required=False, widget=DateInput(), label="To")
    actor = forms.CharField(required=False, max_length=200, help_text="A user name, exactly")
    object_type = forms.ChoiceField(choices=[("", "any"), *ObjectType.choices], required=False, label="Object")
    action = forms.ChoiceField(choices=[("", "any"), *AuditAction.choices], required=False)

    def to_filters(self) -> AuditFilters:
        """The filters to apply; call after ``is_valid()``. Invalid fields are ignored, not guessed."""
        data: dict[str, Any] = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        return AuditFilters(
            since=_midnight(data.get("date_from")),
            # "To" is inclusive for people: everything before the next midnight.
            until=_midnight(data["date_to"] + dt.timedelta(days=1)) if data.get("date_to") else None,
            actor=(data.get("actor") or "").strip(),
            object_type=data.get("object_type") or "",
            action=data.get("action") or "",
        )


def _midnight(day: dt.date | None) -> dt.datetime | None:
    return None if day is None else dt.datetime.combine(day, dt.time.min, tzinfo=timezone.get_current_timezone())
