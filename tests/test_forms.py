"""form_field, and services' validation errors on forms and in API responses."""

from __future__ import annotations

import pytest
from django import forms
from django.core.exceptions import ValidationError

from costcontrol.forms import add_service_errors, form_field, service_error_detail


class _Form(forms.Form):
    name = forms.CharField()
    kind = forms.ChoiceField(choices=[("a", "A")])


def test_returns_the_field_itself() -> None:
    form = _Form()
    field = form_field(form, "kind", forms.ChoiceField)
    assert field is form.fields["kind"]
    assert isinstance(field, forms.ChoiceField)


def test_a_field_of_another_class_raises() -> None:
    with pytest.raises(TypeError, match=r"_Form\.name is a CharField, not a ChoiceField"):
        form_field(_Form(), "name", forms.ChoiceField)


def test_a_services_field_errors_land_on_their_fields_and_the_rest_on_the_form() -> None:
    form = _Form({"name": "x", "kind": "a"})
    assert form.is_valid()
    add_service_errors(form, ValidationError({"name": ["Taken."], "timezone": ["Unknown zone."]}))
    assert form.errors == {"name": ["Taken."], "__all__": ["Unknown zone."]}
    plain = _Form({"name": "x", "kind": "a"})
    assert plain.is_valid()
    add_service_errors(plain, ValidationError("That key belongs to another organisation."))
    assert plain.non_field_errors() == ["That key belongs to another organisation."]


def test_api_detail_keeps_fields_when_there_are_some() -> None:
    assert service_error_detail(ValidationError({"name": ["Taken."]})) == {"name": ["Taken."]}
    assert service_error_detail(ValidationError("Nope.")) == ["Nope."]
