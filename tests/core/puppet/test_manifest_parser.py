"""The parser of Puppet class definitions: headers, parameters, nesting, errors, and any well-formed
header reading back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treeherd.core.puppet.manifest_lexer import ManifestError
from treeherd.core.puppet.manifest_parser import parse_manifest
from treeherd.model.errors import InvalidInput
from treeherd.model.puppet import PuppetParam

WEB = r"""
# class fake (  -- a comment mentioning a class
/* class hidden { */
class profile::web (
  Integer $workers = 4,            # a comment ( with a paren
  Hash[String, Array[Integer]] $map = { 'a' => [1, 2], "b}" => [3] },
  String $greeting = "hello ${facts['os']['name']} }",
  $plain,
  Optional[Pattern[/^\w+$/]] $pattern = undef,
  String $doc = @("END"),
    ) text { with braces "and quotes'
    | END
  Array[String] $multi = [
    'one',   # a comment inside a default
    'two',
  ],
) inherits profile {
  if $facts['x'] =~ /\{/ { notice('}') }
  $half = $workers / 2
  file { '/tmp/x': content => "${greeting} ) {" }
}
"""


def test_a_header_with_types_defaults_and_a_parent() -> None:
    [found] = parse_manifest(WEB, "profile/manifests/web.pp")
    assert found.name == "profile::web"
    assert found.parent == "profile"
    assert found.line == 4
    assert found.params == [
        PuppetParam(name="workers", type="Integer", default="4"),
        PuppetParam(
            name="map", type="Hash[String, Array[Integer]]", default="{ 'a' => [1, 2], \"b}\" => [3] }"
        ),
        PuppetParam(name="greeting", type="String", default="\"hello ${facts['os']['name']} }\""),
        PuppetParam(name="plain"),
        PuppetParam(name="pattern", type="Optional[Pattern[/^\\w+$/]]", default="undef"),
        PuppetParam(name="doc", type="String", default='@("END")'),
        PuppetParam(name="multi", type="Array[String]", default="[ 'one', 'two', ]"),
    ]
    assert [p.required for p in found.params] == [False, False, False, True, False, False, False]


def test_classes_without_parameters_nested_and_several_per_file() -> None:
    text = """
    class base { class inner { } }
    class ::other inherits ::base {}
    define base::thing ($x = { 'a' => 1 }) { class { 'base': } }
    node 'web.example.com' { include base }
    class last() {}
    """
    found = parse_manifest(text)
    assert [(c.name, c.parent, c.params) for c in found] == [
        ("base", None, []),
        ("base::inner", None, []),
        ("other", "base", []),
        ("last", None, []),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("class a ( $x = 1 {", "never closed"),
        ("class a { ", "is never closed"),
        ("class a }", "expected '{' to open the body of class a"),
        ("}", "closes nothing"),
        ("class a ($x, $x) {}", "declares a parameter twice"),
        ("class a (Integer) {}", "has no $name"),
        ("class a ($x 1) {}", "expected '= value' after $x"),
        ("class a ($x =) {}", "expected '= value' after $x"),
        ("class Bad {}", "not a valid class name"),
        ("class a { $x = 'open", "never closed"),
        ('class a { $x = "${ open }', "never closed"),
        ("/* open", "never closed"),
        ("class a { $t = @(EOT)\n no end\n}", "never ends"),
        ("class a inherits { }", "'inherits' needs a class name"),
        ("class a ( $x = [1, 2) ) {}", "expected ']', found ')'"),
    ],
)
def test_malformed_code_is_reported_with_its_line(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=r"^m\.pp:\d+") as caught:
        parse_manifest(text, "m.pp")
    assert message in caught.value.detail
    assert isinstance(caught.value, InvalidInput)


# ---- properties ------------------------------------------------------------------------------------
_segment = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: s not in {"class", "inherits", "node", "define", "and", "or", "if", "in", "unless", "case"}
)
_name = st.lists(_segment, min_size=1, max_size=3).map("::".join)
_string_chars = st.text(alphabet=st.sampled_from("ab {}()[]$#,/*\"'\\\n"), max_size=12)
_default = st.one_of(
    st.integers(-1000, 1000).map(str),
    _string_chars.map(lambda s: "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"),
    _string_chars.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'),
    st.lists(st.integers(0, 9).map(str), max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.just("{ 'k' => [1, { 'n' => '}' }] }"),
    st.just("undef"),
)
_param = st.tuples(
    _segment,
    st.sampled_from([None, "String", "Integer[0, 10]", "Optional[Hash[String, Any]]"]),
    st.one_of(st.none(), _default),
)


@given(
    name=_name,
    parent=st.one_of(st.none(), _name),
    params=st.lists(_param, max_size=5, unique_by=lambda p: p[0]),
    comment=_string_chars.map(lambda s: s.replace("\n", " ")),
)
def test_any_well_formed_header_reads_back(
    name: str, parent: str | None, params: list[tuple[str, str | None, str | None]], comment: str
) -> None:
    lines = [f"# {comment}", f"class {name} ("]
    for param, type_, default in params:
        lines.append(
            "  "
            + (f"{type_} " if type_ else "")
            + f"${param}"
            + (f" = {default}" if default else "")
            + ",  # x"
        )
    lines.append(")" + (f" inherits {parent}" if parent else "") + " {")
    lines.append("  $y = 'a { b'\n}")
    [found] = parse_manifest("\n".join(lines))
    assert found.name == name
    assert found.parent == parent
    assert [(p.name, p.type, p.default) for p in found.params] == params
