"""The lexer of Puppet code: comments dropped, strings, heredocs and regular expressions as single
tokens, division told from a regular expression, and line numbers."""

from __future__ import annotations

import pytest

from treeherd.core.puppet.manifest_lexer import ManifestError, tokenize


def test_division_is_not_a_regex_and_a_regex_may_hold_braces() -> None:
    tokens = tokenize("$a = ($b + 1) / 2\nif $x =~ /a{2}/ { }")
    kinds = [(t.kind, t.text) for t in tokens]
    assert ("op", "/") in kinds
    assert ("regex", "/a{2}/") in kinds


def test_comments_are_dropped_and_brackets_inside_strings_stay_inside() -> None:
    text = "# a ( comment\n/* { */ $x = 'a { b' \"c ${d['}']} )\" # }\n"
    assert [(t.kind, t.text) for t in tokenize(text)] == [
        ("var", "$x"),
        ("op", "="),
        ("string", "'a { b'"),
        ("string", "\"c ${d['}']} )\""),
    ]


def test_a_heredoc_body_is_skipped_and_lines_are_counted() -> None:
    tokens = tokenize('$t = @("END")\n  { not code (\n  | END\nclass a {}\n')
    assert [(t.kind, t.text, t.line) for t in tokens] == [
        ("var", "$t", 1),
        ("op", "=", 1),
        ("heredoc", '@("END")', 1),
        ("name", "class", 4),
        ("name", "a", 4),
        ("op", "{", 4),
        ("op", "}", 4),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("'open", "m.pp:1: a string opened with ' is never closed"),
        ('\n"${ open', "m.pp:2: an interpolation ${...} is never closed"),
        ("\n\n/* open", "m.pp:3: a /* comment is never closed"),
        ("$t = @(EOT)", "m.pp:1: the heredoc ending with 'EOT' has no body"),
    ],
)
def test_unclosed_things_are_reported_where_they_open(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        tokenize(text, "m.pp")
    assert caught.value.detail == message
