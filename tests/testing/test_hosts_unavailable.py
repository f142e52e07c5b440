"""Why the multi-host tests skip: the reason names what is missing (runs everywhere, root or not)."""

from __future__ import annotations

import pytest

from treeherd.testing import netns


def test_not_root_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert netns.unavailable() == "network namespaces need root (run the tests as root)"


def test_a_missing_tool_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "ip" else f"/bin/{tool}")
    assert netns.unavailable() == "`ip` is not installed (Debian package iproute2)"
