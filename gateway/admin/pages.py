"""The dashboard's HTML: page shells under ``/admin`` and the fragments they load.

Server-rendered with Jinja2; a small hand-written script (``static/admin.js``) signs in, loads
the fragments with the admin key, follows the event stream and calls the REST API for every
action. Shells carry no tenant data and need no key; fragments need an admin key, like the
JSON routes they mirror. Strict headers: no inline script or style, no framing, no referrer.

Sign-in decision: the operator pastes an admin API key; the script keeps it in
``sessionStorage`` (this tab only, gone when it closes) and sends it as a bearer token. No
cookie means no CSRF surface and the same authentication as every other API client; the price
is that the pages render their data through fragments fetched by the script, and the event
stream is read with ``fetch`` (``EventSource`` cannot send an Authorization header).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from gateway.admin import health, queue, timeline
from gateway.admin.dependencies import QueueFilterDep, Tenants
from gateway.deps import RuntimeDep
from gateway.errors import NotFound
from gateway.ledger.states import CallStatus
from gateway.ledger.transitions import now

HERE = Path(__file__).resolve().parent
STATIC = {"admin.js": "text/javascript", "admin.css": "text/css", "favicon.svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
ACTION_LABELS = {"approve": "Approve", "deny": "Deny", "cancel": "Cancel call",
                 "commit_turn": "Commit turn", "cancel_turn": "Cancel turn",
                 "extend_turn": "Extend turn", "extend_call": "Extend TTL",
                 "retry_compensation": "Retry compensation"}

router = APIRouter(include_in_schema=False)


def duration(seconds: float | None) -> str:
    """``42s``, ``3m 05s``, ``2h 10m``: short enough for a table cell."""
    if seconds is None:
        return "—"
    total = int(max(0, seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    return f"{total // 3600}h {total % 3600 // 60:02d}m"


def _compact(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _pretty(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode()


def _short(value: str | None, keep: int = 8) -> str:
    if not value:
        return ""
    prefix, _, rest = value.partition("_")
    return f"{prefix}_{rest[:keep]}…" if rest and len(rest) > keep else value


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(duration=duration, compact=_compact, pretty=_pretty, short=_short,
                       iso=_iso, human=lambda s: str(s).replace("_", " "))
    env.globals.update(ACTION_LABELS=ACTION_LABELS, statuses=[s.value for s in CallStatus],
                       effects=queue.EFFECTS)
    return env


ENV = _environment()


def render(template: str, **context: Any) -> HTMLResponse:
    html = ENV.get_template(template).render(now=now(), **context)
    return HTMLResponse(html, headers=HEADERS)


def _tools(rt: Any) -> list[str]:
    return sorted(tool.name for tool in rt.registry)


@router.get("/admin")
def queue_page(rt: RuntimeDep) -> HTMLResponse:
    return render("queue.html", page="queue", title="Pending calls", tools=_tools(rt))


@router.get("/admin/")
def admin_slash() -> Response:
    return RedirectResponse("/admin", status_code=308)


@router.get("/admin/sessions/{session_id}")
def session_page(session_id: str) -> HTMLResponse:
    return render("session.html", page="session", title=f"Session {_short(session_id)}",
                  session_id=session_id)


@router.get("/admin/health")
def health_page() -> HTMLResponse:
    return render("health.html", page="health", title="Health")


@router.get("/admin/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(HERE / "static" / name, media_type=STATIC[name],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


@router.get("/admin/fragments/queue")
def queue_fragment(rt: RuntimeDep, tenants: Tenants, f: QueueFilterDep) -> HTMLResponse:
    page = queue.load_page(rt, tenants, f)
    return render("_queue.html", page=page, f=f, tenants=tenants,
                  total=sum(page.counts.values()))


@router.get("/admin/fragments/sessions/{session_id}")
def session_fragment(session_id: str, rt: RuntimeDep, tenants: Tenants) -> HTMLResponse:
    with rt.dbs.ledger.connect() as conn:
        data = timeline.session_timeline(conn, tenants, session_id)
    at = now()
    return render("_session.html", data=data, layout=timeline.layout(data, at), at=at)


@router.get("/admin/fragments/health")
def health_fragment(rt: RuntimeDep, tenants: Tenants) -> HTMLResponse:
    return render("_health.html", h=health.health(rt, tenants))
