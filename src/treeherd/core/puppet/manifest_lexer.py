"""The lexer of Puppet code: text to tokens, and the error every manifest reader raises.

Comments (`#`, `/* */`) are dropped, and strings (single- and double-quoted, with `${...}` interpolation),
heredocs (`@("END")` ... `END`) and regular expressions become single tokens, so a brace or parenthesis
inside any of them never confuses the structure the parser (`core.puppet.manifest_parser`) follows. A
`/` is a regular expression where a value may start and a division after a value. Every problem is
reported with its file and line.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from treeherd.model.errors import InvalidInput

__all__ = ["ManifestError", "Token", "tokenize"]

_NAME = re.compile(r"(?:::)?[A-Za-z_][\w-]*(?:::[A-Za-z_][\w-]*)*")
_VARIABLE = re.compile(r"\$(?:::)?(?:[A-Za-z_]\w*::)*[A-Za-z_]\w*|\$\d+")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_HEREDOC = re.compile(r'@\(\s*("?)([^":/)\s]+)\1\s*(?::\s*[\w+.-]+)?\s*(?:/\s*[\w$]*)?\s*\)')
_OPERATORS = ("=>", "==", "=~", "!=", "!~", ">=", "<=", "+>", "->", "~>", "<-", "<~")
# After these a `/` starts a regular expression; after a value it divides.
_VALUE_KINDS = ("var", "number", "string")
_NOT_VALUES = {"node", "and", "or", "if", "elsif", "unless", "case", "in", "not"}


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
