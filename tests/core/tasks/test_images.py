"""Container image references: what Docker accepts passes, anything else says what to give instead."""

from __future__ import annotations

import pytest

from treeherd.core.tasks.images import image_reference_problem

GOOD = [
    "sha256:" + "a" * 64,
    "755613d9842e",
    "busybox",
    "local/busybox:1",
    "registry.example.com:5000/team/app:v1.2-rc_3",
    "app@sha256:" + "0" * 64,
    "my_app.v2/x--y:latest",
]
BAD = ["", "Bad//Ref", "UPPER/case:1", "app:", ":tag", "app:-x", "a b", "app@sha256:short", "x" * 256]


@pytest.mark.parametrize("reference", GOOD)
def test_docker_references_are_accepted(reference: str) -> None:
    assert image_reference_problem(reference) is None


@pytest.mark.parametrize("reference", BAD)
def test_anything_else_is_refused_with_what_to_give(reference: str) -> None:
    problem = image_reference_problem(reference)
    assert problem is not None
    assert "image" in problem
