"""What the console's pages show, read from one consistent view of the store: a tree level, a search,
a node with its inheritance, bindings, routes and services, the edge's routes in nginx's match order.

Every read is bounded (a page of children, of machines, of search hits) so a page costs the same with
ten nodes as with ten thousand; the whole tree is never walked for one page except by a search. A
service's tasks are the exception: its page counts them all, so it reads them as the manager hands
them out, a few thousand at a time with the loop let run between, and keeps only what it shows.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterable, Iterable
from datetime import datetime
from itertools import chain

import msgspec

from treeherd.core.cluster import current_settings
from treeherd.core.edge.routing import location_order
from treeherd.core.puppet.enc import classify
from treeherd.core.tasks.slots import DESIRED_RUNNING_LABELS
from treeherd.core.tree.tree import ancestors, resolve
from treeherd.core.view import View
from treeherd.model.enc import EncAnswer
from treeherd.model.errors import TreeherdError
from treeherd.model.gateway import BackendState
from treeherd.model.kinds import binding_key
from treeherd.model.objects import Binding, Domain, Machine, TreeNode
from treeherd.model.services import Service, Task
from treeherd.model.states import TaskState
from treeherd.model.tasks_view import TaskRow
from treeherd.model.views import ResolvedNode

PAGE = 200
MACHINES_PAGE = 100  # each row carries its bindings and an availability form: half a tree level's rows
SEARCH_HITS = 100


class Child(msgspec.Struct, frozen=True, kw_only=True):
    """A tree node as its parent's list shows it: name, path and what hangs below it."""

    path: str
    name: str
    children: int
    machines: int
    labels: dict[str, str]


class Page(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a longer list and the cursor of the next (None: this was the last)."""

    items: list[Child]
    after: str | None


class RouteRow(msgspec.Struct, frozen=True, kw_only=True):
    """One location of a domain: its uri and the node it routes to."""

    uri: str
    path: str


class DomainRoutes(msgspec.Struct, frozen=True, kw_only=True):
    domain: Domain
    routes: list[RouteRow]


class BoundMachine(msgspec.Struct, frozen=True, kw_only=True):
    hostname: str
    weight: int
    availability: str
    agent: str
    pin: str | None = None
    ejected: bool = False


class NodeDetail(msgspec.Struct, frozen=True, kw_only=True):
    """A node's page: the node as stored, its resolved attributes, a page of its machines, its routes,
    its services and its children count."""

    node: TreeNode
    resolved: ResolvedNode
    lineage: list[str]
    machines: list[BoundMachine]
    machine_count: int
    routes: list[tuple[str, str]]
    services: list[Service]
    children: int


class ServiceTasks(msgspec.Struct, frozen=True, kw_only=True):
    """What a service's page shows of its tasks: the first of its current tasks by slot and the newest
    of its earlier ones, each with how many there are in all."""

    current: list[TaskRow]
    current_count: int
    history: list[TaskRow]  # newest first
    history_count: int


def _since(row: TaskRow) -> datetime:
    return row.since


async def service_tasks(pages: AsyncIterable[list[TaskRow]], *, shown: int, history: int) -> ServiceTasks:
    """The first `shown` current tasks of `pages` (all of a service's task rows in their order, as
    `Services.task_pages` yields them) and its `history` newest earlier tasks, with the counts of both.

    One pass, and nothing kept beyond what is shown: the newest earlier tasks are chosen as the pages
    come (a bounded heap, not a sort of them all), ties in the pages' order."""
    current: list[TaskRow] = []
    current_count = 0
    newest: list[TaskRow] = []
    history_count = 0
    async for rows in pages:
        earlier = []
        for row in rows:
            # Meant to run: a current task; the others are the service's history.
            if row.desired_state in DESIRED_RUNNING_LABELS:
                if current_count < shown:
                    current.append(row)
                current_count += 1
            else:
                earlier.append(row)
        if earlier:
            history_count += len(earlier)
            # `newest` precedes this page's rows and is in the order nlargest gives: the result is that
            # of one sort of every earlier task, newest first, equal times in the pages' order.
            newest = heapq.nlargest(history, chain(newest, earlier), key=_since)
    return ServiceTasks(
        current=current, current_count=current_count, history=newest, history_count=history_count
    )


def _child(view: View, node: TreeNode) -> Child:
    return Child(
        path=node.path,
        name=node.path.rsplit(".", 1)[-1],
        children=len(view.referrers(TreeNode, "parent", node.id)),
        machines=len(view.referrers(Binding, "node", node.id)),
        labels=node.labels,
    )


def children(view: View, parent: str | None, *, after: str | None = None, limit: int = PAGE) -> Page:
    """The children of `parent` (None: the roots), by path, `limit` at a time after `after`."""
    if parent:
        node = view.lookup(TreeNode, "path", parent)
        found: Iterable[TreeNode] = view.referrers(TreeNode, "parent", node.id) if node else ()
    else:
        found = (n for n in view.all(TreeNode) if n.parent_id is None)
    ordered = sorted((n for n in found if after is None or n.path > after), key=lambda n: n.path)
    shown = ordered[:limit]
    more = shown[-1].path if len(ordered) > limit else None
    return Page(items=[_child(view, n) for n in shown], after=more)


def search(view: View, query: str, *, limit: int = SEARCH_HITS) -> list[Child]:
    """Nodes whose path contains `query`, or with `key=value`: whose own label matches."""
    query = query.strip()
    if not query:
        return []
    key, sep, value = query.partition("=")
    if sep:
        key, value = key.strip(), value.strip()
        hits = (
            n for n in view.all(TreeNode) if n.labels.get(key) == value or (not value and key in n.labels)
        )
    else:
        lowered = query.lower()
        hits = (n for n in view.all(TreeNode) if lowered in n.path.lower())
    return [_child(view, n) for n in sorted(hits, key=lambda n: n.path)[:limit]]


def node_detail(view: View, node: TreeNode, *, limit: int = PAGE) -> NodeDetail:
    lineage = ancestors(view, node)
    bindings = view.referrers(Binding, "node", node.id)
    machines: list[BoundMachine] = []
    for binding in bindings:
        machine = view.get(Machine, binding.machine_id)
        if machine is not None:
            state = view.lookup(BackendState, "pair", binding_key(machine.id, node.id))
            machines.append(
                BoundMachine(
                    hostname=machine.hostname,
                    weight=binding.weight,
                    availability=machine.availability,
                    agent=machine.agent.state if machine.agent else "",
                    pin=state.pin if state else None,
                    ejected=state.ejected if state else False,
                )
            )
    machines.sort(key=lambda m: m.hostname)
    routes = []
    for route in node.domain_uris:
        domain = view.get(Domain, route.domain_id)
        routes.append((domain.name if domain else route.domain_id, route.uri))
    return NodeDetail(
        node=node,
        resolved=resolve(node, lineage),
        lineage=[a.path for a in lineage],
        machines=machines[:limit],
        machine_count=len(machines),
        routes=sorted(routes),
        services=sorted(view.referrers(Service, "node", node.id), key=lambda s: s.name),
        children=len(view.referrers(TreeNode, "parent", node.id)),
    )


def edge_routes(view: View) -> list[DomainRoutes]:
    """Each domain with its locations in the order nginx matches them (longest prefix first)."""
    found = []
    for domain in sorted(view.all(Domain), key=lambda d: d.name):
        by_uri = {
            route.uri: node.path
            for node in view.referrers(TreeNode, "route_domain", domain.id)
            for route in node.domain_uris
            if route.domain_id == domain.id
        }
        found.append(
            DomainRoutes(
                domain=domain, routes=[RouteRow(uri=u, path=by_uri[u]) for u in location_order(by_uri)]
            )
        )
    return found


def machines_page(
    view: View, *, prefix: str = "", after: str | None = None, limit: int = MACHINES_PAGE
) -> tuple[list[tuple[Machine, list[str], int]], str | None]:
    """A page of machines by hostname (those starting with `prefix`), each with the nodes it is bound
    to and how many tasks it runs."""
    found = sorted(
        (
            m
            for m in view.all(Machine)
            if m.hostname.startswith(prefix) and (after is None or m.hostname > after)
        ),
        key=lambda m: m.hostname,
    )
    shown = found[:limit]
    rows = []
    for machine in shown:
        paths = []
        for binding in view.referrers(Binding, "machine", machine.id):
            node = view.get(TreeNode, binding.node_id)
            if node is not None:
                paths.append(node.path)
        tasks = sum(
            1 for t in view.referrers(Task, "machine", machine.id) if t.status.state == TaskState.RUNNING
        )
        rows.append((machine, sorted(paths), tasks))
    return rows, (shown[-1].hostname if len(found) > limit else None)


def enc_answer(view: View, hostname: str, now: datetime) -> tuple[EncAnswer | None, str]:
    """What the ENC answers for `hostname` (as `treeherd enc` would, without recording a conflict),
    or None with the reason it has no answer."""
    try:
        return classify(view, hostname, current_settings(view, now)), ""
    except TreeherdError as error:
        return None, error.detail
