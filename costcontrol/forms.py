"""Typed access to the fields of a built form."""

from __future__ import annotations

from typing import TypeVar

from django import forms

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
