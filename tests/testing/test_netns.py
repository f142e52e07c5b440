"""treeherd.testing.netns without namespaces (runs everywhere, root or not): why the multi-host tests
skip, and which /24 the hosts get."""

from __future__ import annotations

import ipaddress

import pytest

from treeherd.testing import netns


def test_not_root_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert netns.unavailable() == "network namespaces need root (run the tests as root)"


def test_a_missing_tool_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "ip" else f"/bin/{tool}")
    assert netns.unavailable() == "`ip` is not installed (Debian package iproute2)"


def test_the_subnet_is_the_first_10_231_x_24_the_machine_does_not_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    used = [ipaddress.IPv4Network("10.231.0.0/24"), ipaddress.IPv4Network("10.231.1.128/25")]
    monkeypatch.setattr(netns, "used_networks", lambda: used)
    assert netns.free_subnet() == ipaddress.IPv4Network("10.231.2.0/24")
    monkeypatch.setattr(netns, "used_networks", lambda: [ipaddress.IPv4Network("10.0.0.0/8")])
    with pytest.raises(RuntimeError, match=r"every /24 of 10\.231\.0\.0/16 is in use"):
        netns.free_subnet()
