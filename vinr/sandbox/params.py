"""Request parameters: JSON bodies (VINR's SDKs), form bodies (`metadata[k]=v`), query strings.

A parameter is found by its camelCase name or its snake_case twin (`unitAmount`,
`unit_amount`). Amounts in JSON must be integers; in forms and query strings, which carry only
strings, an integer written in digits.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from vinr.sandbox.errors import SandboxError

_INTEGER = re.compile(r"-?\d{1,18}")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _bad(message: str, code: str = "parameter_invalid") -> SandboxError:
    return SandboxError(400, code, message)


def parse_form(text: str) -> dict[str, Any]:
    """`a=1&metadata[k]=v&secrets[]=x` -> `{"a": "1", "metadata": {"k": "v"}, "secrets": ["x"]}`."""
    data: dict[str, Any] = {}
    try:
        for key, value in parse_qsl(text, keep_blank_values=True):
            name, bracket, rest = key.partition("[")
            inner = rest.rstrip("]")
            if not bracket:
                data[name] = value
            elif inner == "" or inner.isdigit():
                data.setdefault(name, []).append(value)
            else:
                data.setdefault(name, {})[inner] = value
    except (AttributeError, TypeError):
        raise _bad("form parameters mix lists, objects and plain values") from None
    return data


class Params:
    """Typed access to one request's parameters; a wrong type is a 400 naming the parameter."""

    def __init__(self, data: dict[str, Any], strings_only: bool):
        self._data = data
        self._strings_only = strings_only  # forms and queries: numbers arrive as digit strings

    def _raw(self, name: str) -> Any:
        if name in self._data:
            return self._data[name]
        return self._data.get(_snake(name))

    def text(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        value = self._raw(name)
        if value is None:
            if required:
                raise _bad(f"Missing required param: {name}.", "parameter_missing")
            return default
        if not isinstance(value, str):
            raise _bad(f"{name} must be a string")
        return value

    def integer(self, name: str, default: int | None = None, required: bool = False) -> int | None:
        value = self._raw(name)
        if value is None:
            if required:
                raise _bad(f"Missing required param: {name}.", "parameter_missing")
            return default
        if self._strings_only and isinstance(value, str) and _INTEGER.fullmatch(value):
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(f"{name} must be an integer (amounts are in minor units, never a float)")
        return value

    def metadata(self) -> dict[str, str]:
        value = self._raw("metadata")
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise _bad("metadata must be an object of strings")
        return value

    def strings(self, name: str) -> list[str]:
        value = self._raw(name)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(f"{name} must be a list of strings")
        return value


async def body_params(request: Request) -> Params:
    body = await request.body()
    if not body.strip():
        return Params({}, strings_only=False)
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return Params(parse_form(body.decode("utf-8", "replace")), strings_only=True)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _bad("The body is not valid JSON.", "body_invalid") from None
    if not isinstance(data, dict):
        raise _bad("The body must be a JSON object.", "body_invalid")
    return Params(data, strings_only=False)


def query_params(request: Request) -> Params:
    return Params(dict(request.query_params), strings_only=True)
