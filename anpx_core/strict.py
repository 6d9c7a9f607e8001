"""Strict parsers for values read from the network: one place, one error type.

Every number, name and string a peer or client sends is checked here before anything
relies on it. Numbers are ASCII digits only, with bounds (``str.isdigit()`` accepts
``"²"``, which ``int()`` then refuses; ``int()`` accepts ``" 1_0 "`` and Arabic-Indic
digits); strings that will be encoded later are checked to be encodable now, where the
value enters and a precise reason can be given. Each function returns a valid value or
raises :class:`StrictError`, never anything else (tests/test_hostile_values.py throws
arbitrary Unicode and bytes at each to prove it).
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_PORT",
    "StrictError",
    "check_field_value",
    "check_fields",
    "check_host",
    "check_target",
    "check_text",
    "check_token",
    "parse_port",
    "parse_scheme",
    "parse_uint",
    "wire_bytes",
]

MAX_PORT = 65535

_DIGITS = re.compile(r"[0-9]+")  # a str pattern: ASCII 0-9 only, never other Nd digits
_DIGITS_B = re.compile(rb"[0-9]+")
# RFC 9110 section 5.6.2 tchar
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5: CR, LF and NUL are never valid in a field value; other C0 controls
# (but HTAB) and DEL are not either. Characters above U+00FF are kept (a v1 peer's str may
# hold them; they travel as UTF-8).
_BAD_FIELD_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A request-target never holds whitespace or control characters (RFC 9112 section 3.2).
_TOKEN_LIST = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:,[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
# A Host / X-Forwarded-Host value: reg-name, IPv4 or [IPv6], optional port (RFC 9110 7.2).
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.]+\])(?::([0-9]*))?")
_BAD_TARGET_CHAR = re.compile(r"[\x00-\x20\x7f]")


class StrictError(ValueError):
    """A value from the network is not acceptable; the message names it and says why."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_uint(text: str | bytes, maximum: int, what: str = "value", minimum: int = 0) -> int:
    """``text`` as an unsigned decimal: ASCII digits only (no sign, space or ``_``), at most
    as many digits as ``maximum`` has, and ``minimum <= value <= maximum``."""
    if isinstance(text, str):
        ok = _DIGITS.fullmatch(text) is not None
    elif isinstance(text, bytes):
        ok = _DIGITS_B.fullmatch(text) is not None
    else:
        raise StrictError(f"{what} must be text, got {type(text).__name__}")
    if not ok:
        raise StrictError(f"{what} must be ASCII digits, got {_show(text)}")
    if len(text) > len(str(maximum)):
        raise StrictError(f"{what} {_show(text)} is out of range ({minimum} to {maximum})")
    value = int(text)
    if not minimum <= value <= maximum:
        raise StrictError(f"{what} {value} is out of range ({minimum} to {maximum})")
    return value


def parse_port(text: str | bytes, what: str = "port") -> int:
    """A TCP port, 1 to 65535."""
    return parse_uint(text, MAX_PORT, what, minimum=1)


def parse_scheme(text: str, what: str = "scheme") -> str:
    """``http`` or ``https`` (any case), lower-cased: the only schemes the front serves."""
    if isinstance(text, str) and text.isascii():
        low = text.lower()
        if low in ("http", "https"):
            return low
    raise StrictError(f"{what} must be http or https, got {_show(text)}")


def check_text(text: str, what: str = "text") -> str:
    """A str that can be encoded as UTF-8 (JSON can carry lone surrogates; UTF-8 cannot)."""
    if not isinstance(text, str):
        raise StrictError(f"{what} must be a string, got {type(text).__name__}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise StrictError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return text


def check_token(text: str, what: str = "name") -> str:
    """An HTTP token (method, header field name)."""
    if not isinstance(text, str) or _TOKEN.fullmatch(text) is None:
        raise StrictError(f"{what} must be an HTTP token, got {_show(text)}")
    return text


def check_field_value(text: str, what: str = "header value") -> str:
    """A header field value: no control character but HTAB, and encodable."""
    check_text(text, what)
    if _BAD_FIELD_CHAR.search(text):
        raise StrictError(f"{what} holds a control character (CR, LF, NUL, ...)")
    return text


def check_fields(headers: list[tuple[str, str]], what: str = "header") -> None:
    """Every name a token, every value a valid field value (one pass over all of them)."""
    if not headers:
        return
    try:
        names = ",".join([name for name, _ in headers])  # a list joins faster than a generator
        values = "".join([value for _, value in headers])
        # no name holds the separator itself: "a,b" is not two tokens
        names_ok = names.count(",") == len(headers) - 1 and _TOKEN_LIST.fullmatch(names)
        values_ok = values.isascii() and not _BAD_FIELD_CHAR.search(values)
    except (TypeError, ValueError):  # not (str, str) pairs: the loops below say which
        names_ok = values_ok = False
    if not names_ok:
        for pair in headers:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise StrictError(f"{what} {_show(pair)} is not a (name, value) pair")
            check_token(pair[0], f"{what} name")
    if not values_ok:
        for name, value in headers:
            check_field_value(value, f"{what} {_show(name)} value")


def check_target(text: str, what: str = "request-target") -> str:
    """A request-target: not empty, no whitespace or control character, encodable."""
    check_text(text, what)
    if not text or _BAD_TARGET_CHAR.search(text):
        raise StrictError(f"{what} is empty or holds whitespace or a control character")
    return text


def check_host(text: str, what: str = "Host") -> str:
    """A Host-like value: host name, IPv4 or [IPv6], optional port."""
    match = _HOST.fullmatch(text) if isinstance(text, str) else None
    if match is None or not text or text.startswith(":"):
        raise StrictError(f"{what} {_show(text)} is not a host[:port]")
    if match.group(1):
        parse_port(match.group(1), f"{what} port")
    return text


def wire_bytes(text: str, what: str = "text") -> bytes:
    """The bytes of a header or target string: ISO-8859-1 (how the front reads wire bytes),
    else UTF-8 (a str from a v1 peer may hold any character)."""
    if not isinstance(text, str):
        raise StrictError(f"{what} must be a string, got {type(text).__name__}")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise StrictError(f"{what} is not valid Unicode (a lone surrogate)") from None
