"""The ENC document as YAML, written without a YAML library (the ENC runs on every Puppet agent run:
this module imports nothing but `re` and `math`, so it costs nothing at start-up).

Output is block-style YAML 1.1 that Puppet's parser (Psych) and PyYAML read back to the same values:
- strings are plain only when they cannot be read as anything else (no YAML 1.1 booleans such as `yes`
  or `off`, no null, nothing that starts like a number or an indicator); otherwise double-quoted with
  every non-printable character escaped;
- floats always carry a `.` (`1.0e+20`), as YAML 1.1 needs to read them as floats;
- empty maps and lists are `{}` and `[]`; containers inside lists are written in flow style.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["dump", "enc_document"]

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*(?:::[A-Za-z0-9_.\-/]+)*")
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "nan", "inf"})
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def _printable(char: str) -> bool:
    """YAML's printable set, less the two characters a double-quoted scalar escapes."""
    code = ord(char)
    if code < 0x7F:
        return code >= 0x20 and char not in '"\\'
    return 0xA0 <= code <= 0xD7FF or (0xE000 <= code <= 0xFFFD and code != 0xFEFF) or code >= 0x10000


def _quote(text: str) -> str:
    if all(_printable(char) for char in text):
        return f'"{text}"'
    out = []
    for char in text:
        if _printable(char):
            out.append(char)
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _string(text: str) -> str:
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED and not text.endswith(":"):
        return text
    return _quote(text)


def _float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if e and exponent[0] not in "+-":
        exponent = "+" + exponent
    return mantissa + (f"e{exponent}" if e else "")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quote(str(k))}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _quote(value) if isinstance(value, str) else _scalar(value)


def _block(value: Any, depth: int, lines: list[str], prefix: str) -> None:
    """Append `prefix` + value: inline when it is a scalar or empty, else nested below at `depth`."""
    pad = "  " * depth
    if isinstance(value, dict) and value:
        lines.append(prefix.rstrip())
        for key, item in value.items():
            _block(item, depth + 1, lines, f"{pad}{_string(str(key))}: ")
    elif isinstance(value, list | tuple) and value:
        lines.append(prefix.rstrip())
        for item in value:
            text = _flow(item) if isinstance(item, dict | list | tuple) else _scalar(item)
            lines.append(f"{pad}- {text}")
    elif isinstance(value, dict):
        lines.append(prefix + "{}")
    elif isinstance(value, list | tuple):
        lines.append(prefix + "[]")
    else:
        lines.append(prefix + _scalar(value))


def dump(document: dict[str, Any]) -> str:
    """A mapping as a YAML document (`---` first, a newline last)."""
    if not document:
        return "--- {}\n"
    lines = ["---"]
    for key, value in document.items():
        _block(value, 1, lines, f"{_string(str(key))}: ")
    return "\n".join(lines) + "\n"


def enc_document(answer: dict[str, Any]) -> str:
    """The YAML Puppet reads from the JSON answer of `GET /api/v1/enc/{hostname}`."""
    document: dict[str, Any] = {"classes": answer["classes"], "parameters": answer["parameters"]}
    if answer.get("environment"):
        document["environment"] = answer["environment"]
    return dump(document)
