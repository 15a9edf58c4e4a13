"""How a diff's values read on the audit page: text as it is, everything else as JSON (null, true, [...])."""

from __future__ import annotations

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def diff_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
