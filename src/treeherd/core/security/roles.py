"""Who may do what: the roles a caller can hold and the scope every API operation declares.

Each operation of the API names one scope; a role is allowed an operation when the scope lists it.
People hold `admin`, `operator` or `viewer`; the components hold their own narrow roles (an agent its
session, a gateway its snapshot and reports, the Puppet ENC its answers), so that a stolen component
credential cannot change the tree.
"""

from __future__ import annotations

import enum

from treeherd.model.security import Role


class Scope(enum.StrEnum):
    READ = "read"  # reading the cluster's objects
    WATCH = "watch"  # the stream of changes and the gateways' records: people, and gateways (which
    # follow the routing objects' changes and read their own record when they start)
    OPERATE = "operate"  # changing services, the tree, routes, domains, pins, policies
    ADMINISTER = "administer"  # tokens, the CA, cluster settings
    SESSION = "session"  # an agent's channel
    GATEWAY = "gateway"  # a gateway's snapshot, reports and own events
    ENC = "enc"  # an ENC answer for one host, machine reports from Puppet
    PUBLIC = "public"  # liveness and the API's own description


_PEOPLE = frozenset({Role.ADMIN, Role.OPERATOR, Role.VIEWER})

ROLES_FOR_SCOPE: dict[Scope, frozenset[Role]] = {
    Scope.READ: _PEOPLE,
    Scope.WATCH: _PEOPLE | {Role.GATEWAY},
    Scope.OPERATE: frozenset({Role.ADMIN, Role.OPERATOR}),
    Scope.ADMINISTER: frozenset({Role.ADMIN}),
    Scope.SESSION: frozenset({Role.AGENT}),
    Scope.GATEWAY: frozenset({Role.ADMIN, Role.GATEWAY}),
    # Not viewers: an ENC answer records the host's class conflicts, and reports change machines.
    Scope.ENC: frozenset({Role.ADMIN, Role.OPERATOR, Role.ENC}),
    Scope.PUBLIC: frozenset(Role),
}


def allows(role: Role, scope: Scope) -> bool:
    """Whether a caller holding `role` may perform an operation of `scope`."""
    return role in ROLES_FOR_SCOPE[scope]


def parse_role(text: str) -> Role:
    """A role named by a person (`token create --role R`); unknown names say which exist."""
    try:
        return Role(text.strip().lower())
    except ValueError:
        names = ", ".join(role.value for role in Role)
        raise ValueError(f"unknown role {text!r}: use one of {names}") from None
