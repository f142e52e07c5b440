"""Reading class definitions out of Puppet code: `class a::b (Type $p = default, ...) inherits a { ... }`.

A small lexer turns the text into tokens, skipping comments (`#`, `/* */`) and the insides of strings
(single- and double-quoted, with `${...}` interpolation), heredocs (`@("END")` ... `END`) and regular
expressions, so a brace or parenthesis inside any of them never confuses the structure. The parser then
follows braces to find class definitions, including classes nested in a class body (Puppet names them
after the enclosing class), and reads each header: the parameters with their types and defaults (source
text, whitespace collapsed), and the parent.

`module_classes` applies Puppet's autoload rule: module `foo`'s `manifests/init.pp` holds class `foo`,
`manifests/bar/baz.pp` holds `foo::bar::baz`. A class defined anywhere else cannot be found by Puppet
when only the ENC names it, so it is left out of the catalog with a warning. Every syntax problem is
reported with its file and line; a file with one is not read at all (nothing is half-parsed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from treeherd.model.errors import InvalidInput
from treeherd.model.puppet import PuppetClass, PuppetParam

__all__ = ["ManifestError", "autoload_name", "classes_file", "module_classes", "parse_manifest", "tokenize"]

_NAME = re.compile(r"(?:::)?[A-Za-z_][\w-]*(?:::[A-Za-z_][\w-]*)*")
_VARIABLE = re.compile(r"\$(?:::)?(?:[A-Za-z_]\w*::)*[A-Za-z_]\w*|\$\d+")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_HEREDOC = re.compile(r'@\(\s*("?)([^":/)\s]+)\1\s*(?::\s*[\w+.-]+)?\s*(?:/\s*[\w$]*)?\s*\)')
_OPERATORS = ("=>", "==", "=~", "!=", "!~", ">=", "<=", "+>", "->", "~>", "<-", "<~")
_MODULE = re.compile(r"^[a-z][a-z0-9_]*$")
_SEGMENT = re.compile(r"^[a-z][a-z0-9_]*$")
_PARAM = re.compile(r"^\$[a-z_]\w*$")
# After these a `/` starts a regular expression; after a value it divides.
_VALUE_KINDS = ("var", "number", "string")
_NOT_VALUES = {"node", "and", "or", "if", "elsif", "unless", "case", "in", "not"}
_OPEN = {"(": ")", "[": "]", "{": "}"}


class ManifestError(InvalidInput):
    """Puppet code this reader cannot make sense of: says where and what."""


class Token(NamedTuple):
    kind: str  # name | var | number | string | regex | heredoc | op
    text: str
    start: int
    end: int
    line: int


class _Lexer:
    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self.pos = 0
        self.line = 1
        self.tokens: list[Token] = []
        self.heredocs: list[tuple[str, int]] = []  # tags whose bodies start after the current line

    def fail(self, message: str, line: int | None = None) -> ManifestError:
        return ManifestError(f"{self.where}:{line or self.line}: {message}", field="modules")

    def run(self) -> list[Token]:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\n":
                self.pos += 1
                self.line += 1
                if self.heredocs:
                    self._skip_heredoc_bodies()
            elif char in " \t\r\f\v":
                self.pos += 1
            elif char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.fail("a /* comment is never closed")
                self._advance_to(end + 2)
            elif char in "'\"":
                start, line = self.pos, self.line
                self._string(char)
                self._emit("string", start, line)
            elif char == "$" and (match := _VARIABLE.match(text, self.pos)):
                self._match("var", match)
            elif char == "@" and (match := _HEREDOC.match(text, self.pos)):
                self.heredocs.append((match.group(2), self.line))
                self._match("heredoc", match)
            elif char.isdigit() and (match := _NUMBER.match(text, self.pos)):
                self._match("number", match)
            elif (match := _NAME.match(text, self.pos)) and match.end() > self.pos:
                self._match("name", match)
            elif char == "/" and self._regex_allowed() and self._regex():
                pass
            else:
                two = text[self.pos : self.pos + 2]
                size = 2 if two in _OPERATORS else 1
                self.tokens.append(
                    Token("op", text[self.pos : self.pos + size], self.pos, self.pos + size, self.line)
                )
                self.pos += size
        if self.heredocs:
            tag, line = self.heredocs[0]
            raise self.fail(f"the heredoc ending with {tag!r} has no body", line)
        return self.tokens

    def _emit(self, kind: str, start: int, line: int) -> None:
        self.tokens.append(Token(kind, self.text[start : self.pos], start, self.pos, line))

    def _match(self, kind: str, match: re.Match[str]) -> None:
        self.tokens.append(Token(kind, match.group(0), match.start(), match.end(), self.line))
        self.pos = match.end()

    def _advance_to(self, position: int) -> None:
        self.line += self.text.count("\n", self.pos, position)
        self.pos = position

    def _string(self, quote: str) -> None:
        """Skip a string starting at `pos` (its opening quote), interpolations included."""
        text, line = self.text, self.line
        self.pos += 1
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\\":
                self._advance_to(min(self.pos + 2, len(text)))
            elif char == quote:
                self.pos += 1
                return
            elif quote == '"' and text.startswith("${", self.pos):
                self._interpolation(line)
            else:
                self._advance_to(self.pos + 1)
        raise self.fail(f"a string opened with {quote} is never closed", line)

    def _interpolation(self, line: int) -> None:
        """Skip `${ ... }` inside a double-quoted string: braces nest, strings inside are skipped."""
        text = self.text
        depth = 0
        while self.pos < len(text):
            char = text[self.pos]
            if char in "'\"" and depth > 0:
                self._string(char)
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    self.pos += 1
                    return
            self._advance_to(self.pos + 1)
        raise self.fail("an interpolation ${...} is never closed", line)

    def _skip_heredoc_bodies(self) -> None:
        text = self.text
        while self.heredocs:
            tag, opened = self.heredocs.pop(0)
            end_line = re.compile(r"^[ \t]*\|?[ \t]*-?[ \t]*" + re.escape(tag) + r"[ \t]*\r?$", re.MULTILINE)
            match = end_line.search(text, self.pos)
            if match is None:
                raise self.fail(f"the heredoc opened here never ends with a line {tag!r}", opened)
            after = text.find("\n", match.end())
            self._advance_to(len(text) if after < 0 else after + 1)

    def _regex_allowed(self) -> bool:
        if not self.tokens:
            return True
        last = self.tokens[-1]
        if last.kind in _VALUE_KINDS or last.kind == "regex":
            return False
        if last.kind == "name":
            return last.text in _NOT_VALUES
        return last.text not in (")", "]")

    def _regex(self) -> bool:
        """A regular expression `/.../` on one line; False (a division) when it does not close."""
        text = self.text
        index = self.pos + 1
        while index < len(text) and text[index] != "\n":
            if text[index] == "\\":
                index += 2
                continue
            if text[index] == "/":
                self.tokens.append(Token("regex", text[self.pos : index + 1], self.pos, index + 1, self.line))
                self.pos = index + 1
                return True
            index += 1
        return False


def tokenize(text: str, where: str = "<text>") -> list[Token]:
    """The tokens of Puppet code (comments and whitespace dropped)."""
    return _Lexer(text, where).run()


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
    if not all(_SEGMENT.fullmatch(segment) for segment in name.split("::")):
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


def autoload_name(module: str, relative: str) -> str | None:
    """The class Puppet's autoloader looks for in `<module>/manifests/<relative>`, or None (not a .pp
    file, or a path Puppet cannot name)."""
    if not relative.endswith(".pp"):
        return None
    parts = relative[:-3].split("/")
    if parts == ["init"]:
        return module
    if not all(_SEGMENT.fullmatch(part) for part in parts):
        return None
    return "::".join([module, *parts])


def _autoload_path(name: str) -> str:
    module, *rest = name.split("::")
    return f"{module}/manifests/{'/'.join(rest) or 'init'}.pp"


def module_classes(files: Iterable[tuple[str, str, str]]) -> tuple[list[PuppetClass], list[str]]:
    """The catalog of a set of modules from `(module, path under manifests/, text)` triples, and
    warnings about what was left out. Raises ManifestError listing every file that cannot be read."""
    classes: dict[str, PuppetClass] = {}
    warnings: list[str] = []
    errors: list[str] = []
    for module, relative, text in files:
        where = f"{module}/manifests/{relative}"
        if not _MODULE.fullmatch(module):
            warnings.append(f"{module}: not a valid Puppet module name, skipped")
            continue
        expected = autoload_name(module, relative)
        try:
            parsed = parse_manifest(text, where)
        except ManifestError as error:
            errors.append(error.detail)
            continue
        for found in parsed:
            if found.name != expected:
                warnings.append(
                    f"{where}:{found.line}: class {found.name} is not where Puppet's autoloader looks for it"
                    f" ({_autoload_path(found.name)}), left out"
                )
                continue
            if found.name in classes:
                errors.append(f"{where}:{found.line}: class {found.name} is defined twice")
                continue
            classes[found.name] = PuppetClass(
                name=found.name, parent=found.parent, params=found.params, file=where
            )
    if errors:
        shown = "\n  ".join(errors[:20]) + (f"\n  and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise ManifestError(f"the Puppet code has errors; nothing was changed:\n  {shown}", field="modules")
    return [classes[name] for name in sorted(classes)], warnings


def classes_file(text: str, where: str = "<classes file>") -> list[PuppetClass]:
    """A classes file: one class name a line; blank lines and `#` comments are ignored."""
    names: dict[str, None] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip().removeprefix("::")
        if not line:
            continue
        if not all(_SEGMENT.fullmatch(segment) for segment in line.split("::")):
            raise ManifestError(
                f"{where}:{number}: {line!r} is not a Puppet class name (one name a line, e.g. profile::web)",
                field="classes_file",
            )
        names[line] = None
    return [PuppetClass(name=name, params_known=False) for name in sorted(names)]
