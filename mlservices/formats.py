"""File formats told apart by their first bytes, never by a name a client chose.

``sniff(head)`` names the format of a file from its first 64 bytes, or
returns ``None``::

    sniff(b"\\x89PNG\\r\\n\\x1a\\n...")     # -> 'png'
    sniff(b"hello")                       # -> None

``CONTENT_TYPES`` maps each format to the content type it is served with.
"""

from __future__ import annotations

CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "webm": "audio/webm",
    "mp4": "audio/mp4",
    "aac": "audio/aac",
    "bin": "application/octet-stream",
}


def sniff(head: bytes) -> str | None:
    """The format of a file that starts with ``head`` (64 bytes are plenty)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"  # Matroska/WebM: the decoder tells the two apart
    if head[4:8] == b"ftyp":
        return "mp4"  # MP4, M4A, MOV: ISO base media files
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE6 == 0xE2):
        return "mp3"  # an ID3 tag, or an MPEG-1/2 layer III frame header
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"  # an ADTS frame header
    return None
