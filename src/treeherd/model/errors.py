"""The error hierarchy every layer raises and the API turns into `{"error", "detail", "field"}` bodies.

Each error carries a short machine-readable `code`, a human `detail` that says what to fix, and the
`field` of the request it concerns (when there is one). The HTTP status lives here too, so the API layer
needs no table of its own.
"""

from __future__ import annotations


class TreeherdError(Exception):
    """Base class: something the caller asked for cannot be done as asked."""

    code = "error"
    status = 400

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidInput(TreeherdError):
    """The request is malformed or a value is out of range."""

    code = "invalid"
    status = 400


class NotFound(TreeherdError):
    """A referenced object does not exist."""

    code = "not_found"
    status = 404


class AlreadyExists(TreeherdError):
    """An object with the same unique key (path, hostname, name, ...) exists."""

    code = "already_exists"
    status = 409


class VersionConflict(TreeherdError):
    """The write was based on a version that is no longer current: re-read and try again."""

    code = "conflict"
    status = 409


class Refused(TreeherdError):
    """The request is well formed but would break an invariant of the tree."""

    code = "refused"
    status = 409


class Compacted(TreeherdError):
    """A watch asked to resume from a revision older than the retained event history."""

    code = "compacted"
    status = 410

    def __init__(self, detail: str, *, oldest: int) -> None:
        super().__init__(detail, field="since")
        self.oldest = oldest


class Unavailable(TreeherdError):
    """Something the request needs cannot be reached now (the store's disk, a machine's agent);
    nothing was changed. Retry later."""

    code = "unavailable"
    status = 503


class NoLeader(Unavailable):
    """Several managers share the cluster and none leads at the moment (an election is under way);
    nothing was changed. Clients ask again for a few seconds before they give up."""

    code = "no_leader"


class LeaderOnly(Unavailable):
    """A follower manager cannot answer this itself: it needs what only the leader runs (the agents'
    sessions, their logs, the endpoint registry). A follower's API forwards such a request to the
    leader, so a client sees this only when that fails."""

    code = "leader_only"


class WatchLagged(TreeherdError):
    """A watcher fell too far behind the live stream; resume from its last revision."""

    code = "lagged"
    status = 503

    def __init__(self, detail: str, *, last_revision: int) -> None:
        super().__init__(detail)
        self.last_revision = last_revision


class Unauthenticated(TreeherdError):
    """The caller did not prove who it is (no credential, or one that is wrong, expired or revoked).
    The detail never says which: a stranger learns nothing from it."""

    code = "unauthenticated"
    status = 401


class Forbidden(TreeherdError):
    """The caller is known but its role does not allow this operation."""

    code = "forbidden"
    status = 403
