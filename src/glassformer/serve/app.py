"""The explorer's ASGI app: the page, its assets, and the JSON API under ``/api``.

Every API call is a POST of a JSON object naming the model by its index or name (``"model": 0``);
the models are the ones opened at start (:class:`~glassformer.serve.handlers.Served`), so nothing a
browser sends ever reaches the filesystem. The app only checks input and routes it; the numbers come
from :mod:`glassformer.serve.handlers`, which calls the library.

Safety (DESIGN.md, "Contracts"):

* the Host header must name the bound host (loopback aliases when bound to loopback): a page on
  another site that rebinds its DNS name to 127.0.0.1 is refused (Starlette's TrustedHostMiddleware);
* a body must be JSON (``Content-Type: application/json``), so a plain cross-site form cannot post;
* every input is bounded, and a bad one gets a 4xx JSON ``{"error": "..."}`` naming the problem;
* one computation at a time per model (a lock), so concurrent tabs never mix.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from glassformer.errors import GlassformerError
from glassformer.serve import handlers, why
from glassformer.serve.handlers import RequestError, Served

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
USER_ERRORS = (GlassformerError, ValueError, TypeError, KeyError, IndexError)
MAX_BODY = 256 * 1024  # bytes of one request body
MAX_HEADS = 256  # heads in one ablation list


class Body:
    """A request's JSON object, read field by field with bounds; a bad field is a RequestError naming it."""

    def __init__(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise RequestError("the request body must be a JSON object")
        self.data = data

    def text(self, name: str = "text", required: bool = True) -> str | None:
        v = self.data.get(name)
        if v is None and not required:
            return None
        if not isinstance(v, str):
            raise RequestError(f"{name!r} must be a string" + ("" if name in self.data else " (it is missing)"))
        if len(v) > handlers.MAX_TEXT_CHARS:
            raise RequestError(f"{name!r} is {len(v)} characters; at most {handlers.MAX_TEXT_CHARS}")
        return v

    def int(self, name: str, lo: int, hi: int, default: int | None = None, optional: bool = False) -> int | None:
        v = self.data.get(name, default)
        if v is None and (optional or default is not None):
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise RequestError(f"{name!r} must be an integer in {lo}..{hi}, got {v!r}"[:200])
        if not lo <= v <= hi:
            raise RequestError(f"{name!r} must be in {lo}..{hi}, got {v}")
        return v

    def float(self, name: str, lo: float, hi: float, default: float | None, lo_open: bool = False) -> float | None:
        v = self.data.get(name, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise RequestError(f"{name!r} must be a number, got {v!r}"[:200])
        if not (lo < v if lo_open else lo <= v) or v > hi:
            raise RequestError(f"{name!r} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
        return float(v)

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        v = self.data.get(name, default)
        if v not in choices:
            raise RequestError(f"{name!r} must be one of {', '.join(choices)}, got {v!r}"[:200])
        return v

    def heads(self, name: str = "heads") -> list[str]:
        v = self.data.get(name)
        if not isinstance(v, list) or not v or not all(isinstance(h, str) and len(h) < 40 for h in v):
            raise RequestError(f"{name!r} must be a non-empty list of head labels such as \"1.3\" or \"cross.0.2\"")
        if len(v) > MAX_HEADS:
            raise RequestError(f"{name!r} lists {len(v)} heads; at most {MAX_HEADS}")
        return list(dict.fromkeys(v))

    def token(self, name: str = "token") -> str | int | None:
        v = self.data.get(name)
        if v is None or (isinstance(v, int) and not isinstance(v, bool)):
            return v
        if not isinstance(v, str) or len(v) > 100:
            raise RequestError(f"{name!r} must be a token (a short string) or a token id")
        return v


def allowed_hosts(host: str) -> list[str]:
    """The Host header names the app answers to: loopback aliases when bound to loopback; the machine's
    names and addresses when bound to every interface; else the bound name itself."""
    if host in LOOPBACK or host.startswith("127."):
        return sorted({host.strip("[]"), "127.0.0.1", "localhost", "::1", "[::1]"})
    names = {host}
    if host in ("0.0.0.0", "::", ""):
        names |= set(LOOPBACK)
        try:
            name, aliases, addresses = socket.gethostbyname_ex(socket.gethostname())
            names |= {name, *aliases, *addresses, socket.getfqdn()}
        except OSError:
            names.add(socket.gethostname())
    return sorted(names)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(models: list[Served], host: str = "127.0.0.1") -> Starlette:
    """The app serving ``models`` (opened at start), answering only to ``host``'s names."""
    by_name = {s.name: s for s in models}

    def find(body: Body) -> Served:
        ref = body.data.get("model", 0)
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(models):
            return models[ref]
        if isinstance(ref, str) and ref in by_name:
            return by_name[ref]
        raise LookupError(f"no model {ref!r}"[:120] + f"; this server has {', '.join(by_name)} (or their indexes)")

    def endpoint(work: Callable[[Served, Body], dict[str, Any]]) -> Callable:
        async def handle(request: Request) -> Response:
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return _error(415, "send the request body as JSON (Content-Type: application/json)")
            raw = await request.body()
            if len(raw) > MAX_BODY:
                return _error(413, f"the request body is {len(raw)} bytes; at most {MAX_BODY}")
            try:
                body = Body(json.loads(raw or b"{}"))
                served = find(body)
            except json.JSONDecodeError as e:
                return _error(400, f"the request body is not JSON: {e.msg} at character {e.pos}")
            except RequestError as e:
                return _error(400, str(e))
            except LookupError as e:
                return _error(404, str(e.args[0]))

            def locked() -> dict[str, Any]:
                with served.lock:  # one computation at a time per model
                    return work(served, body)

            try:
                return JSONResponse(await run_in_threadpool(locked))
            except USER_ERRORS as e:
                msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                return _error(400, str(msg))
            except Exception:  # a bug, not the user's input: logged here, never a traceback to the page
                log.exception("the explorer failed on %s", request.url.path)
                return _error(500, "internal error; the server's console has the details")

        return handle

    def models_list(request: Request) -> Response:
        return JSONResponse({"models": [handlers.describe(s, i) for i, s in enumerate(models)]})

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def tokens(s: Served, b: Body) -> dict:
        return handlers.tokens(s, b.text(), b.text("target", False))

    def attention(s: Served, b: Body) -> dict:
        return handlers.attention(s, b.text(), b.text("target", False))

    def steps(s: Served, b: Body) -> dict:
        head = b.data.get("head")
        if not isinstance(head, str) or len(head) > 40:
            raise RequestError("'head' must be a head label such as \"1.3\" or \"cross.0.2\"")
        return handlers.steps(s, b.text(), head, b.int("query", 0, s.max_len), b.text("target", False))

    def lens(s: Served, b: Body) -> dict:
        return why.lens(s, b.text(), b.int("k", 1, 20, 3), b.text("target", False))

    def attribution(s: Served, b: Body) -> dict:
        return why.attribution(s, b.text(), b.token(), b.int("position", 0, s.max_len, optional=True),
                                    b.text("target", False))

    def ablate(s: Served, b: Body) -> dict:
        return why.ablate(s, b.text(), b.heads(), b.choice("mode", ("zero", "mean"), "zero"), b.int("k", 1, 50, 5),
                               b.int("position", 0, s.max_len, optional=True), b.text("target", False))

    def importance(s: Served, b: Body) -> dict:
        attention = b.data.get("attention")
        if attention is not None and (not isinstance(attention, str) or len(attention) > 20):
            raise RequestError("'attention' must be an attention's label such as \"decoder\" or \"cross\"")
        return why.importance(s, b.text(), attention, b.choice("mode", ("zero", "mean"), "zero"), b.text("target", False))

    def generate(s: Served, b: Body) -> dict:
        return handlers.generate(
            s, b.text(), b.int("steps", 1, 64, 1), b.float("temperature", 0.0, 10.0, 0.0),
            b.int("top_k", 1, 1000, optional=True), b.float("top_p", 0.0, 1.0, None, lo_open=True),
            b.int("seed", 0, 2**31 - 1, 0), b.int("candidates", 1, 50, 8))

    def fill_mask(s: Served, b: Body) -> dict:
        return handlers.fill_mask(s, b.text(), b.int("k", 1, 50, 5))

    def history(s: Served, b: Body) -> dict:
        return handlers.history(s)

    api = {"tokens": tokens, "attention": attention, "steps": steps, "lens": lens, "attribution": attribution,
           "ablate": ablate, "importance": importance, "generate": generate, "fill-mask": fill_mask, "history": history}
    routes = [Route("/", index), Route("/api/models", models_list, methods=["GET"])]
    routes += [Route(f"/api/{name}", endpoint(fn), methods=["POST"]) for name, fn in api.items()]
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host))],
                     exception_handlers={HTTPException: http_error})
