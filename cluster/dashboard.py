"""optuna-dashboard on a run's study storage (`decomp dashboard RUN`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.runs import open_study, storage_of
from decomp.errors import SpecError

__all__ = ["dashboard_app", "serve"]


def dashboard_app(folder: str | Path):
    """optuna-dashboard's WSGI app on the run's storage (the run and its study must exist)."""
    from optuna_dashboard import wsgi

    config, _ = open_study(folder)
    return wsgi(storage_of(Path(folder), config))


def serve(app, host: str, port: int) -> None:
    """Serve a WSGI app until interrupted (wsgiref, as optuna-dashboard's own server; request log muted)."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class _Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    try:
        server = make_server(host, port, app, handler_class=_Quiet)
    except OSError as err:
        raise SpecError(f"cannot listen on {host}:{port} ({err.strerror}); pass another --port or --host") from None
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
