"""Requests from other web sites: the server has no login, so a page elsewhere that the user visits must not
be able to drive it through the user's browser.

* **Origin**: a browser names the page that sent a POST; one from another origin than the server's own
  gets 403 (scripts such as curl send no Origin and pass).
* **Host** (DNS rebinding): served on loopback, only requests addressed to a loopback name are answered, so a
  foreign domain that resolves to 127.0.0.1 cannot reach it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _hostname(host: str) -> str:
    """'127.0.0.1:7860' -> '127.0.0.1'; '[::1]:7860' -> '::1'."""
    return (urlsplit(f"//{host}").hostname or "").lower()


class OriginGuard:
    """ASGI middleware: 403 for cross-origin POSTs, and for hosts outside ``allowed_hosts`` (None: any host)."""

    def __init__(self, app, allowed_hosts: Sequence[str] | None = None):
        self.app = app
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts) if allowed_hosts is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            return await _forbidden(send, f"host {host!r} is not served here: open http://localhost:PORT/ (the server "
                                          "answers loopback names only; see --host)")
        origin = headers.get("origin")
        foreign = origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower())
        if foreign and scope["method"] not in ("GET", "HEAD", "OPTIONS"):  # "null": a sandboxed page
            return await _forbidden(send, f"requests from the page {origin} are refused: use this server's own "
                                          "page or a script (no Origin header)")
        return await self.app(scope, receive, send)


async def _forbidden(send, message: str) -> None:
    body = json.dumps({"error": message, "field": None, "code": 403}).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
