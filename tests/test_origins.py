"""The websocket's origin check is exact: scheme, host and port.

Channels' AllowedHostsOriginValidator compared host names only, so a page on
``http://localhost:9999`` or ``https://127.0.0.1`` could open the socket of a
site served on ``http://127.0.0.1:8000``.
"""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator

from webapp.asgi import application
from webapp.origins import origin_allowed

HOSTS = ["127.0.0.1", "localhost", "[::1]", "example.com"]


@pytest.mark.parametrize(
    "origin, host, scheme, trusted, allowed",
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws", [], True),  # the page's own origin
        ("http://localhost:9999", "127.0.0.1:8000", "ws", [], False),  # another host and port
        ("https://127.0.0.1", "127.0.0.1:8000", "ws", [], False),  # another scheme and port
        ("https://127.0.0.1:8000", "127.0.0.1:8000", "ws", [], False),  # another scheme
        ("http://127.0.0.1", "127.0.0.1:8000", "ws", [], False),  # another port
        ("http://localhost:8000", "127.0.0.1:8000", "ws", [], False),  # another host the site also serves
        ("HTTP://LocalHost:8000", "localhost:8000", "ws", [], True),  # case does not matter
        ("http://example.com:80", "example.com", "ws", [], True),  # default ports are explicit
        ("https://example.com", "example.com", "wss", [], True),  # wss: the page is https
        ("http://example.com", "example.com", "wss", [], False),
        ("http://[::1]:8000", "[::1]:8000", "ws", [], True),
        ("http://evil.example", "evil.example", "ws", [], False),  # a Host the site does not serve
        ("https://example.com", "web:8000", "ws", ["https://example.com"], True),  # trusted, behind a TLS proxy
        ("https://example.com:8443", "web:8000", "ws", ["https://example.com"], False),
        ("http://example.com", "web:8000", "ws", ["https://example.com"], False),
        ("https://app.example.com", "web:8000", "ws", ["https://*.example.com"], True),
        ("https://example.com", "web:8000", "ws", ["https://*.example.com"], True),  # as Django reads it
        ("https://badexample.com", "web:8000", "ws", ["https://*.example.com"], False),
        ("null", "127.0.0.1:8000", "ws", [], False),
        (None, "127.0.0.1:8000", "ws", [], False),
        ("http://127.0.0.1:8000/page", "127.0.0.1:8000", "ws", [], False),  # not an origin
        ("http://127.0.0.1:80x0", "127.0.0.1:8000", "ws", [], False),
        ("http://127.0.0.1:8000", None, "ws", [], False),
    ],
)
def test_origin_allowed(origin, host, scheme, trusted, allowed):
    assert origin_allowed(origin, host=host, scheme=scheme, allowed_hosts=HOSTS, trusted=trusted) is allowed


async def handshake(origin: bytes, host: bytes = b"127.0.0.1:8000") -> bool:
    communicator = WebsocketCommunicator(application, "/ws/jobs", headers=[(b"origin", origin), (b"host", host)])
    connected, _ = await communicator.connect(timeout=30)
    if connected:
        assert (await communicator.receive_json_from(timeout=30))["type"] == "jobs"
        await communicator.disconnect()
    return connected


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("origin", [b"http://localhost:9999", b"https://127.0.0.1", b"http://evil.example"])
async def test_the_socket_refuses_other_origins(origin):
    assert not await handshake(origin)


@pytest.mark.django_db(transaction=True)
async def test_the_socket_accepts_the_pages_own_origin():
    assert await handshake(b"http://127.0.0.1:8000")


@pytest.mark.django_db(transaction=True)
async def test_the_socket_accepts_a_trusted_origin(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://example.com"]
    assert await handshake(b"https://example.com")
    assert not await handshake(b"https://example.org")
