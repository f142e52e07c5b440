"""The parser of Puppet class definitions: from a manifest's tokens, every class it defines with its
header (`class a::b (Type $p = default, ...) inherits a { ... }`).

The parser follows braces to find class definitions, including classes nested in a class body (Puppet
names them after the enclosing class), and reads each header: the parameters with their types and
defaults (source text, whitespace collapsed), and the parent. A syntax problem raises ManifestError with
its file and line (nothing is half-parsed). The tokens come from `core.puppet.manifest_lexer`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from treeherd.core.puppet.manifest_lexer import ManifestError, Token, tokenize
from treeherd.model.puppet import PuppetParam

__all__ = ["NAME_SEGMENT", "ParsedClass", "parse_manifest"]

# One segment of a class name (`a::b` has two); module names follow the same rule.
NAME_SEGMENT = re.compile(r"^[a-z][a-z0-9_]*$")
_PARAM = re.compile(r"^\$[a-z_]\w*$")
_OPEN = {"(": ")", "[": "]", "{": "}"}


class ParsedClass(NamedTuple):
    name: str
    parent: str | None
    params: list[PuppetParam]
    line: int


def _source(tokens: list[Token], text: str) -> str:
    """The source of a run of tokens, with comments and line breaks between them as single spaces."""
    parts: list[str] = []
    for index, token in enumerate(tokens):
        if index and token.start > tokens[index - 1].end:
            parts.append(" ")
        parts.append(text[token.start : token.end])
    return "".join(parts)


def _closing(tokens: list[Token], index: int, where: str) -> int:
    """The index of the bracket closing the one at `index`."""
    stack = [_OPEN[tokens[index].text]]
    for position in range(index + 1, len(tokens)):
        text = tokens[position].text if tokens[position].kind == "op" else ""
        if text in _OPEN:
            stack.append(_OPEN[text])
        elif text in (")", "]", "}"):
            if text != stack[-1]:
                raise ManifestError(
                    f"{where}:{tokens[position].line}: expected {stack[-1]!r}, found {text!r}",
                    field="modules",
                )
            stack.pop()
            if not stack:
                return position
    raise ManifestError(
        f"{where}:{tokens[index].line}: {tokens[index].text!r} is never closed", field="modules"
    )


def _split_params(tokens: list[Token]) -> list[list[Token]]:
    """Parameter declarations: the tokens between top-level commas (a trailing comma is allowed)."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for token in tokens:
        text = token.text if token.kind == "op" else ""
        if text in _OPEN:
            depth += 1
        elif text in (")", "]", "}"):
            depth -= 1
        if text == "," and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    return [part for part in parts if part]


def _param(part: list[Token], text: str, cls: str, where: str) -> PuppetParam:
    index = next((i for i, t in enumerate(part) if t.kind == "var"), None)
    line = part[0].line
    if index is None:
        raise ManifestError(f"{where}:{line}: a parameter of class {cls} has no $name", field="modules")
    variable = part[index]
    if not _PARAM.fullmatch(variable.text):
        raise ManifestError(f"{where}:{line}: {variable.text} is not a valid parameter name", field="modules")
    rest = part[index + 1 :]
    default = None
    if rest:
        if rest[0].text != "=" or len(rest) == 1:
            raise ManifestError(
                f"{where}:{variable.line}: expected '= value' after {variable.text} in class {cls}",
                field="modules",
            )
        default = _source(rest[1:], text)
    type_text = _source(part[:index], text) if index else None
    return PuppetParam(name=variable.text[1:], type=type_text, default=default)


def parse_manifest(text: str, where: str = "<text>") -> list[ParsedClass]:
    """Every class a manifest defines, nested ones named after their enclosing class."""
    tokens = tokenize(text, where)
    found: list[ParsedClass] = []
    scopes: list[tuple[str | None, int]] = []  # per open brace: the class it is the body of, its line
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if (
            token.kind == "name"
            and token.text == "class"
            and following is not None
            and following.kind == "name"
        ):
            outer = next((s for s, _ in reversed(scopes) if s is not None), None)
            parsed, index = _header(tokens, index + 1, text, where, outer)
            found.append(parsed)
            scopes.append((parsed.name, tokens[index - 1].line))
            continue
        if token.kind == "op" and token.text == "{":
            scopes.append((None, token.line))
        elif token.kind == "op" and token.text == "}":
            if not scopes:
                raise ManifestError(f"{where}:{token.line}: '}}' closes nothing", field="modules")
            scopes.pop()
        index += 1
    if scopes:
        raise ManifestError(f"{where}:{scopes[-1][1]}: this '{{' is never closed", field="modules")
    return found


def _header(
    tokens: list[Token], index: int, text: str, where: str, outer: str | None
) -> tuple[ParsedClass, int]:
    """Read `NAME [(params)] [inherits PARENT] {` from `index` (at NAME); returns the class and the
    index just past its opening brace."""
    name_token = tokens[index]
    name = name_token.text
    name = name[2:] if name.startswith("::") else (f"{outer}::{name}" if outer else name)
    if not all(NAME_SEGMENT.fullmatch(segment) for segment in name.split("::")):
        raise ManifestError(
            f"{where}:{name_token.line}: {name_token.text!r} is not a valid class name", field="modules"
        )
    index += 1
    params: list[PuppetParam] = []
    if index < len(tokens) and tokens[index].text == "(" and tokens[index].kind == "op":
        close = _closing(tokens, index, where)
        params = [_param(part, text, name, where) for part in _split_params(tokens[index + 1 : close])]
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ManifestError(
                f"{where}:{name_token.line}: class {name} declares a parameter twice", field="modules"
            )
        index = close + 1
    parent = None
    if index < len(tokens) and tokens[index].kind == "name" and tokens[index].text == "inherits":
        if index + 1 >= len(tokens) or tokens[index + 1].kind != "name":
            raise ManifestError(
                f"{where}:{tokens[index].line}: 'inherits' needs a class name", field="modules"
            )
        parent = tokens[index + 1].text.removeprefix("::")
        index += 2
    if index >= len(tokens) or tokens[index].text != "{" or tokens[index].kind != "op":
        seen = repr(tokens[index].text) if index < len(tokens) else "the end of the file"
        raise ManifestError(
            f"{where}:{name_token.line}: expected '{{' to open the body of class {name}, found {seen}",
            field="modules",
        )
    return ParsedClass(name=name, parent=parent, params=params, line=name_token.line), index + 1
