"""Who may use the dashboard: loopback by default, a token when bound elsewhere, and
same-origin checks for the one request that changes state (retry).

The token is accepted as ``Authorization: Bearer``, an ``X-Changefeed-Token`` header, a
``token`` query parameter (the page then moves it into an HttpOnly cookie and drops it from
the URL) or that cookie, which is what lets the browser's EventSource authenticate.
Without a token only loopback Host headers are accepted, which stops DNS-rebinding pages
from reading a dashboard on localhost.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "changefeed_token"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(host_header: str) -> str:
    """The host part of a Host header (without the port; IPv6 brackets kept off)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def same_origin_path(path: str) -> str:
    """``path`` as a redirect target that stays on this origin: one leading slash, so that
    ``//evil.example/`` (a scheme-relative URL to a browser) becomes ``/evil.example/``.
    (Backslashes and control characters are percent-encoded by `RedirectResponse`.)"""
    return "/" + path.lstrip("/")


class AccessMiddleware:
    """Rejects requests without the token (when one is set) or with a foreign Host header
    (when none is set)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    def _valid(self, candidate: str | None) -> bool:
        if not candidate or self.token is None:
            return False
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.token is None:
            if not is_loopback(host_of(headers.get("host", ""))):
                await PlainTextResponse("forbidden host\n", 403)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        auth = headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        request = Request(scope)
        if self._valid(bearer) or self._valid(headers.get("x-changefeed-token")):
            await self.app(scope, receive, send)
        elif self._valid(query.get("token")):
            if scope["method"] == "GET" and not scope["path"].startswith("/api/"):
                # Move the token from the URL (history, logs) into a cookie.
                rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
                response: Response = RedirectResponse(
                    same_origin_path(scope["path"]) + (f"?{rest}" if rest else ""), 303
                )
                self._set_cookie(response)
                await response(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        elif self._valid(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
        else:
            await PlainTextResponse(
                "a token is required: open the dashboard URL with ?token=...\n", 401
            )(scope, receive, send)

    def _set_cookie(self, response: Response) -> None:
        assert self.token is not None
        response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")


def same_origin(request: Request) -> bool:
    """True when a state-changing request comes from a page of this dashboard (CSRF)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return False
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{request.url.netloc}"


SECURITY_HEADERS = (
    (b"content-security-policy", b"default-src 'self'; object-src 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeadersMiddleware:
    """Adds a strict content security policy (no inline script, no third-party hosts)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
