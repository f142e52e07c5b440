"""Field validators: good values pass (normalised), bad ones raise InvalidInput naming the field.

Values end up in generated nginx, haproxy and Puppet files, so the injection cases matter most:
anything that could end a directive or open a block must be refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from treeherd.core.tree import validate
from treeherd.model.errors import InvalidInput

# Strings that would break out of an nginx/haproxy directive or a quoted value.
INJECTIONS = [
    "a b",
    "a;b",
    "a; rewrite ^ http://evil;",
    "a{b",
    "a}b",
    "a'b",
    'a"b',
    "a\nb",
    "a\rb",
    "a\tb",
    "a#b",
    "a\\b",
    "a\x00b",
    "a\x7fb",
]
# The same, except plain spaces (which label values may contain: they are free text).
INJECTIONS_BUT_SPACE = [value for value in INJECTIONS if value != "a b"]


def refused(call: Callable[[], Any], field: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        call()
    assert caught.value.field == field
    assert caught.value.detail
    return caught.value


# ---- hostname -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "normalised"),
    [
        ("web1", "web1"),
        ("web1.example.com", "web1.example.com"),
        ("WEB1.Example.COM", "web1.example.com"),
        ("web1.example.com.", "web1.example.com"),
        ("  web1.example.com  ", "web1.example.com"),
        ("a-b.c-d", "a-b.c-d"),
        ("1.2.3.4", "1.2.3.4"),
        ("x" * 63 + ".com", "x" * 63 + ".com"),
    ],
)
def test_hostname_accepts_and_normalises(value: str, normalised: str) -> None:
    assert validate.hostname(value) == normalised


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        ".",
        "-web",
        "web-",
        "web_1",
        "a..b",
        ".web",
        "x" * 64,
        ".".join(["x" * 63] * 4) + ".x",
        "*.example.com",
        *INJECTIONS,
    ],
)
def test_hostname_refuses(value: str) -> None:
    refused(lambda: validate.hostname(value), "hostname")


def test_hostname_reports_the_given_field() -> None:
    refused(lambda: validate.hostname("bad host", field="node"), "node")


# ---- domain names ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "normalised"),
    [
        ("shop.example.com", "shop.example.com"),
        ("Shop.Example.COM", "shop.example.com"),
        ("*.example.com", "*.example.com"),
        ("localhost", "localhost"),
    ],
)
def test_domain_name_accepts(value: str, normalised: str) -> None:
    assert validate.domain_name(value) == normalised


@pytest.mark.parametrize(
    "value", ["", "*", "*.", "*.*.example.com", "shop.*.com", "shop_x.com", "-shop.com", *INJECTIONS]
)
def test_domain_name_refuses(value: str) -> None:
    error = refused(lambda: validate.domain_name(value), "name")
    assert "invalid domain" in error.detail


# ---- IP lists -------------------------------------------------------------------------------------
def test_ip_list_canonicalises_and_deduplicates_in_order() -> None:
    values = ["10.0.0.2", " 10.0.0.1 ", "::1", "2001:DB8:0:0::1", "10.0.0.2", "0:0:0:0:0:0:0:1"]
    assert validate.ip_list(values) == ["10.0.0.2", "10.0.0.1", "::1", "2001:db8::1"]
    assert validate.ip_list([]) == []


@pytest.mark.parametrize(
    "value", ["", "10.0.0.256", "10.0.0", "host.example.com", "10.0.0.1/24", "10.0.0.1;", "::g", *INJECTIONS]
)
def test_ip_list_refuses(value: str) -> None:
    error = refused(lambda: validate.ip_list(["10.0.0.1", value]), "ips")
    assert repr(value) in error.detail


# ---- labels ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key", ["tier", "a", "A", "team.io/owner", "a_b-c.d", "k8s.io/app-name", "x" * 128, "0"]
)
def test_label_keys_accepted(key: str) -> None:
    validate.labels({key: "v"})


@pytest.mark.parametrize("key", ["", "-a", "a-", ".a", "a/", "_a", "x" * 129, "a:b", "a=b", "ü", *INJECTIONS])
def test_label_keys_refused(key: str) -> None:
    error = refused(lambda: validate.labels({"ok": "v", key: "v"}), "labels")
    assert "label key" in error.detail


@pytest.mark.parametrize("value", ["", "web", "v1.2.3", "team-a/b_c", "x" * 256, "https://x.example/a?b=c&d"])
def test_label_values_accepted(value: str) -> None:
    validate.labels({"k": value})


def test_label_values_may_contain_plain_spaces() -> None:
    """Label values are free text (`owner: Platform team`): plain spaces pass, other whitespace does not."""
    validate.labels({"owner": "Platform team"})


@pytest.mark.parametrize("value", ["x" * 257, *INJECTIONS_BUT_SPACE])
def test_label_values_refused(value: str) -> None:
    error = refused(lambda: validate.labels({"k": value}), "labels")
    assert "'k'" in error.detail


def test_label_none_values_are_removals_and_pass() -> None:
    validate.labels({"tier": None})


def test_labels_report_the_given_field() -> None:
    refused(lambda: validate.labels({"k": "a;b"}, field="machine.labels"), "machine.labels")


# ---- Puppet -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["base", "profile::web", "role::web_api::v2", "a1", "ntp"])
def test_puppet_class_names_accepted(name: str) -> None:
    validate.puppet_class(name, {"port": 80, "_private": True, "maxConn": 1, "a1_b": None})


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Profile",
        "profile::Web",
        "profile::",
        "::web",
        "profile:web",
        "profile:::web",
        "1profile",
        "_profile",
        "profile-web",
        "profile.web",
        *INJECTIONS,
    ],
)
def test_puppet_class_names_refused(name: str) -> None:
    refused(lambda: validate.puppet_class(name, {}), "puppet_classes")


@pytest.mark.parametrize("param", ["", "Port", "1x", "a-b", "a.b", "a b", "a;b", "a\nb"])
def test_puppet_param_names_refused(param: str) -> None:
    error = refused(lambda: validate.puppet_class("profile::web", {param: 1}), "puppet_classes")
    assert "profile::web" in error.detail


def test_puppet_class_reports_the_given_field() -> None:
    refused(lambda: validate.puppet_class("Bad", None, field="puppet_exclude"), "puppet_exclude")


@pytest.mark.parametrize("value", [None, "production", "dev_1", "x" * 64, "0"])
def test_puppet_environment_accepted(value: str | None) -> None:
    validate.puppet_environment(value)


@pytest.mark.parametrize("value", ["", "Production", "dev-1", "a.b", "x" * 65, *INJECTIONS])
def test_puppet_environment_refused(value: str) -> None:
    refused(lambda: validate.puppet_environment(value), "puppet_environment")


# ---- upstream, port, weight -------------------------------------------------------------------------
@pytest.mark.parametrize("value", [None, "corp_web", "A", "_x", "a.b-c", "x" * 128])
def test_upstream_accepted(value: str | None) -> None:
    validate.upstream(value)


@pytest.mark.parametrize("value", ["", "-a", ".a", "x" * 129, "a/b", *INJECTIONS])
def test_upstream_refused(value: str) -> None:
    refused(lambda: validate.upstream(value), "upstream")


@pytest.mark.parametrize("value", [None, 1, 80, 65535])
def test_port_accepted(value: int | None) -> None:
    validate.port(value)


@pytest.mark.parametrize("value", [0, -1, 65536, 100_000])
def test_port_refused(value: int) -> None:
    refused(lambda: validate.port(value), "port")
    refused(lambda: validate.port(value, field="ports"), "ports")


@pytest.mark.parametrize("value", [0, 1, 100, 256])
def test_weight_accepted(value: int) -> None:
    validate.weight(value)


@pytest.mark.parametrize("value", [-1, 257, 300, 10_000])
def test_weight_refused(value: int) -> None:
    error = refused(lambda: validate.weight(value), "weight")
    assert "0-256" in error.detail


# ---- uri and file paths -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value", ["/", "/api", "/api/v1/", "/a-b_c.d~e", "/caf%C3%A9", "/a?b=c&d=e", "/" + "x" * 1023]
)
def test_uri_accepted(value: str) -> None:
    assert validate.uri(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "api",
        " /api",
        "http://x/api",
        "/" + "x" * 1024,
        "/api\n",
        "/api;",
        "/api {",
        "/api }",
        "/api; return 301 http://evil/;",
        "/api'",
        '/api"',
        "/api\\",
        *("/" + value for value in INJECTIONS),
    ],
)
def test_uri_refused(value: str) -> None:
    refused(lambda: validate.uri(value), "uri")


@pytest.mark.parametrize(
    "value", ["/var/log/nginx/shop_access.log", "shop_access.log", "/etc/ssl/a-b_c.pem", "*.example.com.log"]
)
def test_file_path_accepted(value: str) -> None:
    assert validate.file_path(value, field="ssl_cert_path") == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 4097,
        "/var/log/a b.log",
        "/var/log/a.log;",
        "/var/log/a.log; include /etc/passwd;",
        "/var/log/{a}.log",
        "/var/log/a.log\n",
        "/var/log/a.log\nerror_log /tmp/x",
        "/var/log/'a'.log",
        '/var/log/"a".log',
        "/var/log/a#b.log",
        *("/var/log/" + value for value in INJECTIONS),
    ],
)
def test_file_path_refused(value: str) -> None:
    refused(lambda: validate.file_path(value, field="access_log_path"), "access_log_path")


# ---- numbers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, 0.0, 1, 1.5, 10**12])
def test_non_negative_accepted(value: float) -> None:
    validate.non_negative(value, field="cpus")


@pytest.mark.parametrize("value", [-1, -0.1, -(10**12)])
def test_non_negative_refused(value: float) -> None:
    refused(lambda: validate.non_negative(value, field="memory_bytes"), "memory_bytes")


# ---- a newline at the end of a segment ---------------------------------------------------------------
# `re.match(r"^...$")` also matches when the string ends with "\n" right after the pattern: these
# validators must use `\Z` (or `re.fullmatch`) so a trailing newline cannot slip into generated files.
@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: validate.hostname("web1\n.example.com"), "hostname"),
        (lambda: validate.domain_name("shop\n.example.com"), "name"),
        (lambda: validate.labels({"tier\n": "web"}), "labels"),
        (lambda: validate.puppet_class("profile::web\n", None), "puppet_classes"),
        (lambda: validate.puppet_class("profile::web", {"port\n": 80}), "puppet_classes"),
        (lambda: validate.puppet_environment("production\n"), "puppet_environment"),
        (lambda: validate.upstream("corp_web\n"), "upstream"),
    ],
    ids=["hostname", "domain_name", "label_key", "class_name", "param_name", "environment", "upstream"],
)
def test_a_trailing_newline_is_refused(call: Callable[[], Any], field: str) -> None:
    refused(call, field)
