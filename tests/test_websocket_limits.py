"""Frames past the websocket's size limit, on a real daphne (Hardening, finding 4).

Daphne (autobahn) takes messages up to 1 MiB; a bigger frame must end the
socket with close code 1009 ("message too big") and a reason, never be
dropped without a word.
"""

from __future__ import annotations

import base64
import os
import socket

import pytest

from tests.live_server import asgi_server, base_env, live_database

TIMEOUT = 30


def handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 1 << 16:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 1 << 16 else _xor(payload, mask)
    return bytes([0x80 | opcode]) + length + mask + body


def _xor(payload: bytes, mask: bytes) -> bytes:
    import numpy as np

    data = np.frombuffer(payload, dtype=np.uint8)
    return (data ^ np.resize(np.frombuffer(mask, dtype=np.uint8), len(data))).tobytes()


def read_frames(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Frames from the server until it closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    frames = []
    while len(data) >= 2:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if n == 126:
            n, offset = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, offset = int.from_bytes(data[2:10], "big"), 10
        frames.append((opcode, data[offset:offset + n]))
        data = data[offset + n:]
    return frames


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ws-limits")
    with live_database(tmp) as url, asgi_server(base_env(DATABASE_URL=url), tmp / "daphne.log") as base:
        yield int(base.rsplit(":", 1)[1])


def test_a_2_mib_frame_closes_the_socket_with_1009_and_a_reason(site):
    sock = handshake(site)
    sock.sendall(frame(b'{"type": "predict", "input": "' + b"x" * (2 << 20) + b'"}'))
    frames = read_frames(sock)
    closes = [payload for opcode, payload in frames if opcode == 0x8]
    assert closes, frames
    code, reason = int.from_bytes(closes[0][:2], "big"), closes[0][2:].decode()
    assert code == 1009 and reason, (code, reason)


def test_a_binary_frame_is_answered_and_the_socket_stays_open(site):
    sock = handshake(site)
    sock.sendall(frame(b"\x00\x01binary", opcode=0x2) + frame(b'{"type": "shout"}'))
    sock.settimeout(5)
    data = b""
    while data.count(b'"type": "error"') < 2:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert b'"code": "invalid_json"' in data and b'"code": "invalid_message"' in data
    sock.close()
