"""Open the models named at start and run the explorer with uvicorn (``glassformer serve``)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from glassformer.errors import GlassformerError
from glassformer.serve.handlers import Served

log = logging.getLogger(__name__)

HOW_TO_MAKE_ONE = ("no model to serve: give a model directory (glassformer serve runs/demo-gpt), or make the demo "
                   "runs first with `make demo` or `glassformer demo gpt`")


class ServeError(GlassformerError, ValueError):
    """A model list, host or port the explorer cannot serve."""


def demo_runs(root: str | os.PathLike = "runs") -> list[Path]:
    """The demo runs under ``runs/`` (``runs/demo-*`` holding a config.json), by name."""
    root = Path(root)
    return sorted(p for p in root.glob("demo-*") if (p / "config.json").is_file()) if root.is_dir() else []


def open_models(paths: Sequence[str | os.PathLike], warm: bool = True) -> list[Served]:
    """Load each directory with :func:`glassformer.load`; names are the directory names (made unique).
    ``warm`` computes each model's head roles now, so the first page load is as fast as the rest."""
    from glassformer.api import load
    from glassformer.serve import handlers

    if not paths:
        raise ServeError(HOW_TO_MAKE_ONE)
    served: list[Served] = []
    for p in paths:
        path = Path(p)
        resolved = path.resolve()
        name = resolved.parent.name if resolved.name in ("model", "checkpoint") else resolved.name or str(path)
        while name in {s.name for s in served}:
            name = f"{name}-{len(served)}"
        pipeline = load(path)
        s = Served(name, path, pipeline)
        if warm:
            handlers.roles(s)
        served.append(s)
    return served


def check_port(host: str, port: int) -> None:
    """Refuse a port that is out of range or taken, with one clear line (before any model is loaded)."""
    if not 1 <= port <= 65535:
        raise ServeError(f"--port {port}: choose a port in 1..65535")
    if not host.isprintable() or any(c.isspace() for c in host):
        raise ServeError(f"--host {host!r}: a host name or address has no spaces or control characters")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
            raise ServeError(f"{host}:{port} {why}; choose another with --port") from None


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(models: list[Served], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the explorer until Ctrl-C (uvicorn stops cleanly on SIGINT / SIGTERM)."""
    import uvicorn

    from glassformer.serve.app import create_app

    if host in ("0.0.0.0", "::"):
        sys.stderr.write(f"glassformer: warning: --host {host} serves these models to every machine that can "
                         "reach this one; the explorer has no login\n")
    app = create_app(models, host)
    print(f"glassformer serve: {', '.join(s.name for s in models)} at {url_of(host, port)}  (Ctrl-C stops)", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")).run()
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then passes the Ctrl-C on: that is a clean stop
        pass
    print("glassformer serve: stopped", flush=True)
