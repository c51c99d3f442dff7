"""The API's JSON parser: a NUL character in any string of a body is refused up front (400), since PostgreSQL
cannot store one and a half-validated body must not reach a service."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from portal.errors import NUL_MESSAGE


def has_nul(value: Any) -> bool:
    """Whether any string (key or value) in parsed JSON holds a NUL; iterative, so any depth is fine."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class JSONWithoutNulParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        if has_nul(data):
            raise ParseError(NUL_MESSAGE)
        return data
