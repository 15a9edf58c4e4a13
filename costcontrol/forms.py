"""Helpers shared by the pages' forms and the API: typed field access, services' validation errors, and the
date inputs and presets of every date-range picker."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

from django import forms
from django.core.exceptions import ValidationError

_Field = TypeVar("_Field", bound=forms.Field)


def form_field(form: forms.BaseForm, name: str, kind: type[_Field]) -> _Field:
    """``form.fields[name]``, checked to be a ``kind``.

    ``BaseForm.fields`` holds plain ``Field``s as far as the type checker knows, so setting a
    ``queryset`` or ``choices`` after construction needs the concrete class; a form whose field
    changed class raises ``TypeError`` here rather than silently ignoring the attribute.
    """
    field = form.fields[name]
    if not isinstance(field, kind):
        raise TypeError(f"{type(form).__name__}.{name} is a {type(field).__name__}, not a {kind.__name__}")
    return field


def service_error_detail(exc: ValidationError) -> Any:
    """A service's ``ValidationError`` as field -> messages (a model's ``full_clean``) or a list of messages."""
    return exc.message_dict if hasattr(exc, "error_dict") else exc.messages


def add_service_errors(form: forms.BaseForm, exc: ValidationError) -> None:
    """Show a service's validation errors on the form, instead of a 500.

    Errors about fields the form does not have become form-wide errors.
    """
    errors = exc.message_dict if hasattr(exc, "error_dict") else {None: exc.messages}
    for field, messages in errors.items():
        form.add_error(field if field in form.fields else None, messages)


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="%Y-%m-%d", **kwargs)


def date_presets(*, today: dt.date) -> dict[str, tuple[dt.date, dt.date]]:
    """The ranges every date-range picker offers (overview, reports), both days inclusive."""
    month_start = today.replace(day=1)
    last_month_end = month_start - dt.timedelta(days=1)
    return {
        "Last 7 days": (today - dt.timedelta(days=6), today),
        "This month": (month_start, today),
        "Last month": (last_month_end.replace(day=1), last_month_end),
        "Last 30 days": (today - dt.timedelta(days=29), today),
    }
