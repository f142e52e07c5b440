"""Placement constraints in SwarmKit's syntax: parsing, matching a machine, and canonical text.

Accepted forms (each with `==` or `!=`, whitespace around the operator allowed):

    node.id==ID   node.hostname==NAME   node.role==manager|worker   node.kind==physical|virtual
    node.labels.KEY==VALUE

Invariants, as in SwarmKit: the attribute name (`node.ROLE`, `Node.Labels.`) is case-insensitive, a label
key is matched exactly, and values compare case-insensitively. A machine without the label never equals a
value, so `node.labels.disk!=ssd` holds on a machine that has no `disk` label. `str(constraint)` is the
canonical text (`node.labels.disk==ssd`) that explanations quote.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import msgspec

from treeherd.model.errors import InvalidInput
from treeherd.model.objects import Machine

__all__ = ["ACCEPTED_FORMS", "Attribute", "Constraint", "Operator", "parse_constraint", "parse_constraints"]

Operator = Literal["==", "!="]
Attribute = Literal["id", "hostname", "role", "kind", "labels"]

ACCEPTED_FORMS = (
    "node.id==ID, node.hostname==NAME, node.role==manager|worker, node.kind==physical|virtual, "
    "node.labels.KEY==VALUE (each also with !=)"
)
_FIELD = "constraints"
_LABEL_PREFIX = "node.labels."
_PLAIN_ATTRIBUTES: dict[str, Attribute] = {
    "node.id": "id",
    "node.hostname": "hostname",
    "node.role": "role",
    "node.kind": "kind",
}
# The values an enumerated attribute can take; anything else can never match, so it is refused.
_CHOICES: dict[Attribute, tuple[str, ...]] = {"role": ("manager", "worker"), "kind": ("physical", "virtual")}
# Same rule as a label key accepted by core/tree/validate.py.
_LABEL_KEY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Constraint(msgspec.Struct, frozen=True, kw_only=True):
    """One parsed expression: `node.<attribute>[.<label>] <operator> <value>`."""

    attribute: Attribute
    operator: Operator
    value: str
    label: str = ""  # the label key, for attribute "labels"

    def matches(self, machine: Machine) -> bool:
        """Whether the machine satisfies this constraint."""
        actual: str | None
        if self.attribute == "labels":
            actual = machine.labels.get(self.label)
        elif self.attribute == "id":
            actual = machine.id
        elif self.attribute == "hostname":
            actual = machine.hostname
        elif self.attribute == "role":
            actual = machine.role
        else:
            actual = machine.machine_kind
        equal = actual is not None and actual.casefold() == self.value.casefold()
        return equal if self.operator == "==" else not equal

    def __str__(self) -> str:
        key = _LABEL_PREFIX + self.label if self.attribute == "labels" else f"node.{self.attribute}"
        return f"{key}{self.operator}{self.value}"


def _invalid(text: str, problem: str) -> InvalidInput:
    return InvalidInput(
        f"invalid constraint {text!r}: {problem}; accepted forms: {ACCEPTED_FORMS}", field=_FIELD
    )


def _split(text: str) -> tuple[str, Operator, str]:
    """The key, the operator and the value of an expression, split at its first operator."""
    found = [(index, op) for op in ("==", "!=") if (index := text.find(op)) >= 0]
    if not found:
        hint = " (use '==', not '=')" if "=" in text else ""
        raise _invalid(text, f"no operator: write KEY==VALUE or KEY!=VALUE{hint}")
    index, op = min(found)
    operator: Operator = "==" if op == "==" else "!="
    return text[:index].strip(), operator, text[index + 2 :].strip()


def parse_constraint(text: str) -> Constraint:
    """Parse one expression, or raise InvalidInput(field="constraints") saying what is wrong."""
    if not text.strip():
        raise _invalid(text, "it is empty")
    key, operator, value = _split(text)
    if not key:
        raise _invalid(text, "the attribute before the operator is missing")
    if not value:
        raise _invalid(text, f"the value after {operator!r} is missing")
    if "==" in value or "!=" in value:
        raise _invalid(text, "one operator per constraint; list several constraints instead")
    if _CONTROL.search(value):
        raise _invalid(text, "the value contains control characters")
    label = ""
    lowered = key.lower()
    if lowered.startswith(_LABEL_PREFIX):
        attribute: Attribute = "labels"
        label = key[len(_LABEL_PREFIX) :]
        if not _LABEL_KEY.fullmatch(label):
            raise _invalid(
                text,
                f"invalid label key {label!r}: letters, digits, '.', '_', '/' or '-', starting and ending"
                " with a letter or digit",
            )
    elif lowered in _PLAIN_ATTRIBUTES:
        attribute = _PLAIN_ATTRIBUTES[lowered]
    else:
        raise _invalid(text, f"unknown attribute {key!r}")
    choices = _CHOICES.get(attribute)
    if choices is not None:
        value = value.lower()
        if value not in choices:
            raise _invalid(text, f"node.{attribute} is {' or '.join(choices)}, not {value!r}")
    return Constraint(attribute=attribute, operator=operator, value=value, label=label)


def parse_constraints(texts: Iterable[str]) -> list[Constraint]:
    """Parse every expression of a placement (for validating a service spec at the API)."""
    return [parse_constraint(text) for text in texts]
