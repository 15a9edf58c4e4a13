"""DRF's body parsers for every /api/ endpoint, refusing NUL characters in any string.

Apart from costcontrol/api.py: DRF's settings import these while ``rest_framework.views`` is being
imported, so this module must not import it.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, parsers

from apps.core.storable import holds_nul


def _refuse_nul(data: Any) -> None:
    """A parsed body's strings (keys and values, nested) may not hold NUL: Postgres cannot store or
    compare one, so a value that reached a query would fail as a server error, not a clear 400."""
    if holds_nul(data):
        raise exceptions.ParseError("Strings may not contain NUL characters.")


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            # Python's json decoder recurses: a body nested ~1,000 deep raised this, not the ValueError
            # DRF turns into a 400, and answered a 500.
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
        _refuse_nul(data)
        return data


class FormParser(parsers.FormParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        _refuse_nul(dict(data.lists()))
        return data


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parsed = super().parse(stream, media_type, parser_context)
        _refuse_nul(dict(parsed.data.lists()))
        _refuse_nul([upload.name for upload in parsed.files.values()])
        return parsed
