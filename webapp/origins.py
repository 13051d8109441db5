"""Which pages may open the websocket: an exact origin check (scheme, host and port).

Channels' ``AllowedHostsOriginValidator`` compares host names only, so
``http://localhost:9999`` or ``https://127.0.0.1`` passed for a site on
``http://127.0.0.1:8000``. Here an ``Origin`` is accepted when it is exactly

- the socket's own origin: the scheme of the connection (``http`` for
  ``ws``, ``https`` for ``wss``) with the request's ``Host`` header, that
  host being one of ``ALLOWED_HOSTS`` — the page the site served itself; or
- one of ``CSRF_TRUSTED_ORIGINS`` (e.g. ``https://example.com`` behind a
  TLS-terminating proxy, where the socket itself arrives as ``ws``), read
  as Django reads it: ``https://*.example.com`` is example.com and its
  subdomains, on that scheme and port.

Default ports are made explicit (``http://a`` is ``http://a:80``). A socket
without an ``Origin`` header (or ``null``) is refused, as before::

    >>> origin_allowed("http://127.0.0.1:8000", host="127.0.0.1:8000", scheme="ws",
    ...                allowed_hosts=["127.0.0.1"], trusted=[])
    True
    >>> origin_allowed("http://localhost:9999", host="127.0.0.1:8000", scheme="ws",
    ...                allowed_hosts=["127.0.0.1", "localhost"], trusted=[])
    False
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def _parts(origin: str) -> tuple[str, str, int] | None:
    """``"HTTP://Example.com"`` → ``("http", "example.com", 80)``; None when it is no origin."""
    try:
        url = urlsplit(origin.strip())
        scheme, host, port = url.scheme.lower(), (url.hostname or "").lower(), url.port
    except ValueError:  # a port that is not a number
        return None
    if scheme not in DEFAULT_PORTS or not host or url.path not in ("", "/") or url.query or url.username:
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def _trusted(parts: tuple[str, str, int], pattern: str) -> bool:
    wildcard = "://*." in pattern
    allowed = _parts(pattern.replace("://*.", "://", 1) if wildcard else pattern)
    if allowed is None:
        return False
    scheme, host, port = parts
    if (scheme, port) != (allowed[0], allowed[2]):
        return False
    return host == allowed[1] or (wildcard and host.endswith("." + allowed[1]))


def origin_allowed(origin: str | None, *, host: str | None, scheme: str, allowed_hosts, trusted) -> bool:
    parts = _parts(origin) if origin else None
    if parts is None:
        return False
    if any(_trusted(parts, pattern) for pattern in trusted):
        return True
    if not host:
        return False
    domain, _ = split_domain_port(host)
    own = _parts(f"{'https' if scheme == 'wss' else 'http'}://{host}")
    return bool(domain) and validate_host(domain, allowed_hosts) and parts == own


class OriginValidator:
    """ASGI middleware for websockets: deny (403 at the handshake) unless ``origin_allowed``."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            headers = dict(scope.get("headers") or [])
            origin, host = headers.get(b"origin"), headers.get(b"host")
            if not origin_allowed(
                origin.decode("latin-1") if origin else None,
                host=host.decode("latin-1") if host else None,
                scheme=scope.get("scheme", "ws"),
                allowed_hosts=settings.ALLOWED_HOSTS,
                trusted=settings.CSRF_TRUSTED_ORIGINS,
            ):
                return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
