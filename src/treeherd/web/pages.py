"""The console's read-only pages: the tree (lazy, a level at a time), a node, services, machines, the
edge and the event stream. Each page is whole HTML; its live parts re-fetch themselves through htmx
when the event stream says something changed (see static/console.js)."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.params import Parameter
from litestar.response import Redirect

from treeherd.core.edge.proxy_records import firing_alerts
from treeherd.core.tree.nodes import node_by_path
from treeherd.manager.availability_board import AvailabilityBoard
from treeherd.manager.inventory import Inventory
from treeherd.manager.services import Services
from treeherd.model.errors import Forbidden, NotFound, Unauthenticated
from treeherd.model.gateway import GatewayRecord
from treeherd.model.kinds import KINDS
from treeherd.model.objects import Domain
from treeherd.model.proxies import ProxyRecord
from treeherd.web import queries
from treeherd.web.login import to_login
from treeherd.web.render import page, static_file

HISTORY = 50  # earlier tasks of a service shown on its page, newest first
CURRENT_SHOWN = 500  # current tasks of a service shown on its page, by slot (the rest are counted)

NAV = (
    ("tree", "Tree"),
    ("services", "Services"),
    ("machines", "Machines"),
    ("edge", "Edge"),
    ("events", "Events"),
)


def _page(template: str, section: str, status_code: int = 200, **context: object) -> Response[str]:
    return page(template, status_code, nav=NAV, section=section, **context)


def not_found(section: str, error: NotFound) -> Response[str]:
    return _page("missing.html", section, 404, title="Not found", detail=error.detail)


class ConsolePages(Controller):
    path = "/ui"
    include_in_schema = False
    exception_handlers = {Unauthenticated: to_login, Forbidden: to_login}

    @get("/", sync_to_thread=False)
    def home(self) -> Redirect:
        return Redirect("/ui/tree")

    @get("/static/{name:str}", sync_to_thread=False)
    def static(self, name: str) -> Response[bytes]:
        found = static_file(name)
        if found is None:
            return Response(b"no such file\n", status_code=404, media_type="text/plain")
        body, media_type = found
        return Response(body, media_type=media_type, headers={"cache-control": "public, max-age=3600"})

    @get("/tree", sync_to_thread=False)
    def tree(self, inventory: Inventory, q: str = "") -> Response[str]:
        view = inventory.view
        roots = queries.children(view, None)
        hits = queries.search(view, q) if q else None
        return _page("tree.html", "tree", title="Tree", roots=roots, q=q, hits=hits)

    @get("/tree/children", sync_to_thread=False)
    def tree_children(
        self,
        inventory: Inventory,
        parent: str = Parameter(query="path", default=""),
        after: str | None = None,
    ) -> Response[str]:
        found = queries.children(inventory.view, parent or None, after=after)
        return page("tree_children.html", parent=parent, children=found)

    @get("/tree/search", sync_to_thread=False)
    def tree_search(self, inventory: Inventory, q: str = "") -> Response[str]:
        return page("tree_search.html", q=q, hits=queries.search(inventory.view, q))

    @get("/nodes/{path:str}", sync_to_thread=False)
    def node(self, inventory: Inventory, services: Services, path: str, host: str = "") -> Response[str]:
        view = inventory.view
        try:
            node = node_by_path(view, path)
        except NotFound as error:
            return not_found("tree", error)
        detail = queries.node_detail(view, node)
        summaries = [services.summary(s) for s in detail.services]
        host = host or (detail.machines[0].hostname if detail.machines else "")
        enc, enc_reason = queries.enc_answer(view, host, inventory.clock()) if host else (None, "")
        return _page(
            "node.html",
            "tree",
            title=node.path,
            d=detail,
            summaries=summaries,
            domains=sorted(d.name for d in view.all(Domain)),
            enc=enc,
            enc_host=host,
            enc_reason=enc_reason,
        )

    @get("/services", sync_to_thread=False)
    def services_list(self, services: Services) -> Response[str]:
        return _page("services.html", "services", title="Services", rows=services.overview())

    @get("/services/{name:str}")
    async def service(self, services: Services, name: str) -> Response[str]:
        try:
            found = services.get(name)
            # A few thousand rows at a time, the loop let run between them: a service of a million
            # tasks must not keep the agents' heartbeats waiting while its page is made.
            tasks = await queries.service_tasks(
                services.task_pages(name), shown=CURRENT_SHOWN, history=HISTORY
            )
        except NotFound as error:
            return not_found("services", error)
        return _page(
            "service.html",
            "services",
            title=name,
            s=services.summary(found),
            tasks=tasks.current,
            current_count=tasks.current_count,
            history=tasks.history,
            history_count=tasks.history_count,
        )

    @get("/tasks/{task_id:str}", sync_to_thread=False)
    def task(self, services: Services, task_id: str) -> Response[str]:
        try:
            row = services.row(services.task(task_id))
        except NotFound as error:
            return not_found("services", error)
        return _page("task.html", "services", title=f"task {task_id}", t=row, story=services.story(task_id))

    @get("/domains/{name:str}", sync_to_thread=False)
    def domain(self, inventory: Inventory, name: str) -> Response[str]:
        found = inventory.view.lookup(Domain, "name", name)
        if found is None:
            return not_found("edge", NotFound(f"no domain {name!r} (the edge page lists them)"))
        routes = next(d.routes for d in queries.edge_routes(inventory.view) if d.domain.name == name)
        return _page("domain.html", "edge", title=name, domain=found, routes=routes)

    @get("/machines", sync_to_thread=False)
    def machines(self, inventory: Inventory, prefix: str = "", after: str | None = None) -> Response[str]:
        rows, more = queries.machines_page(inventory.view, prefix=prefix, after=after)
        return _page("machines.html", "machines", title="Machines", rows=rows, more=more, prefix=prefix)

    @get("/edge", sync_to_thread=False)
    def edge(self, inventory: Inventory, board: AvailabilityBoard) -> Response[str]:
        view = inventory.view
        measured = [(report.gateway, service) for report, _ in board.reports() for service in report.services]
        return _page(
            "edge.html",
            "edge",
            title="Edge",
            domains=queries.edge_routes(view),
            alerts=firing_alerts(view.all(GatewayRecord), view.all(ProxyRecord), measured),
            gateways=sorted(view.all(GatewayRecord), key=lambda g: g.name),
        )

    @get("/events", sync_to_thread=False)
    def events(self) -> Response[str]:
        return _page("events.html", "events", title="Events", kinds=sorted(KINDS))
