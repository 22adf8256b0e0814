"""A web address in a config or policy file, checked when the file is read, so that a
typo (no scheme, `htp://`, a port out of range) is named by `check` and at start-up
rather than found by the first write or notification that fails."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, HttpUrl, TypeAdapter, ValidationError

_PARSER: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def _checked(value: str) -> str:
    # The address is kept as written: the parsed form adds a slash after a bare host,
    # which the paths the gateway appends to it would double.
    if value != value.strip():
        raise ValueError(f"expected an http:// or https:// address, got {value!r} (spaces)")
    try:
        _PARSER.validate_python(value)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ValueError(
            f"expected an http:// or https:// address, got {value!r} ({reason})"
        ) from None
    return value


HttpAddress = Annotated[str, AfterValidator(_checked)]
