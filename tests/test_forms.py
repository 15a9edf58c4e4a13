"""form_field: a built form's field as its concrete class."""

from __future__ import annotations

import pytest
from django import forms

from costcontrol.forms import form_field


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
