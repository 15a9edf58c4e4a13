"""Local completion estimates, used only where no provider count exists.

Exact counts come from the provider's ``usage``. When a provider sends none (or
one we cannot believe), a stream's or answer's completion is estimated here at
~4 characters per token. The prompt's upper bound for reservations is the
shared contract's (``apps.core.request.prompt_estimate``).
"""

from __future__ import annotations


def estimate_text(text: str) -> int:
    return (len(text) + 3) // 4 if text else 0
