"""The body limits of webapp.body_limits, enforced inside daphne before a body is read.

Daphne (Twisted) reads a request's whole body into a temporary file before
the ASGI application sees the request: an ASGI middleware alone would let a
client upload 100 MB before being refused, or hold a connection open by
promising a body and never sending it. ``install()`` (called by webapp/asgi.py
when daphne serves it) makes daphne build its requests from
``LimitedWebRequest``, which checks as soon as the headers are in:

- a Content-Length over ``body_limits.limit_for`` is answered 413 at once;
- a chunked body is counted as it arrives and refused with 413 at the limit;
- a body not complete ``HTTP_BODY_TIMEOUT`` seconds after the headers gets 408.

Websockets: a message over daphne's size limit (1 MiB) fails the
connection. Autobahn's default is to drop the TCP connection without a word
("fail by drop"); ``install()`` makes it send the close frame first, code
1009 "message too big" with the reason, so the page knows why.

A refused request never reaches the application. The answer is written
straight to the connection (JSON under /api/), which is then half-closed:
what the client still sends is read and dropped for ``LINGER_SECONDS`` so that
it sees the answer rather than a reset, then the connection is closed.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from urllib.parse import unquote

from daphne import http_protocol, server, ws_protocol
from twisted.internet import reactor

from webapp.body_limits import body_timeout, limit_for, refusal, timeout_message, too_large_message

log = logging.getLogger(__name__)
LINGER_SECONDS = 2.0


def install() -> None:
    """Make daphne's HTTP factory build ``LimitedWebRequest``s (it looks the class up per connection),
    and its websocket factory (made when the server starts, after this import) close with a reason."""
    http_protocol.WebRequest = LimitedWebRequest
    server.WebSocketFactory = ClosingWebSocketFactory


class ClosingWebSocketFactory(ws_protocol.WebSocketFactory):
    def setProtocolOptions(self, **options):
        super().setProtocolOptions(**{**options, "failByDrop": False})


class LimitedWebRequest(http_protocol.WebRequest):
    _limit = None
    _limit_path = "/"
    _received = 0
    _refused = False
    _body_timer = None

    def gotLength(self, length):
        """The headers are in; ``length`` is the Content-Length, or None for a chunked body."""
        super().gotLength(length)
        target = getattr(self.channel, "_path", b"/").split(b"?", 1)[0]
        self._limit_path = unquote(target.decode("latin-1"))
        content_type = (self.requestHeaders.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
        self._limit = limit_for(self._limit_path, content_type)
        if length is not None and self._limit.max_bytes is not None and length > self._limit.max_bytes:
            self._refuse(413, "too_large", too_large_message(self._limit, length))
        elif length != 0:
            self._body_timer = reactor.callLater(body_timeout(), self._body_timed_out)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        if self._limit.max_bytes is not None and self._received > self._limit.max_bytes:
            self._refuse(413, "too_large", too_large_message(self._limit, None))
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        self._stop_body_timer()
        if not self._refused:
            super().requestReceived(command, path, version)

    def connectionLost(self, reason):
        self._stop_body_timer()
        super().connectionLost(reason)

    def _body_timed_out(self):
        self._body_timer = None
        self._refuse(408, "timeout", timeout_message())

    def _stop_body_timer(self):
        if self._body_timer is not None and self._body_timer.active():
            self._body_timer.cancel()
        self._body_timer = None

    def _refuse(self, status: int, code: str, message: str):
        self._refused = True
        self._stop_body_timer()
        log.warning("%s %s: %s", status, self._limit_path, message)
        # No "100 Continue" after this answer (Twisted sends one after gotLength when asked).
        self.requestHeaders.removeHeader(b"expect")
        headers, body = refusal(self._limit_path, status, code, message)
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
        head += [name + b": " + value for name, value in headers]
        transport = self.transport
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            reactor.callLater(LINGER_SECONDS, transport.abortConnection)
        else:
            transport.loseConnection()
