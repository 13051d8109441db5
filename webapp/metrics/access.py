"""Who may read the metrics: ``Authorization: Bearer <METRICS_TOKEN>``, compared in constant time.

With no token configured metrics are off (404, as if there were nothing);
without a bearer token a request gets 401, with a wrong one 403::

    refusal(None, "")                  # -> (404, "Not Found")
    refusal(None, "s3cret")            # -> (401, "...")
    refusal("Bearer nope", "s3cret")   # -> (403, "...")
    refusal("Bearer s3cret", "s3cret") # -> None: let it through
"""

from __future__ import annotations

import hmac

UNAUTHORIZED = "metrics need the header Authorization: Bearer <METRICS_TOKEN>"
FORBIDDEN = "the bearer token is not METRICS_TOKEN"


def refusal(authorization: str | None, token: str) -> tuple[int, str] | None:
    """``(status, message)`` to refuse the request with, or None when ``authorization`` carries ``token``."""
    if not token:
        return 404, "Not Found"
    scheme, _, given = (authorization or "").strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return 401, UNAUTHORIZED
    if not hmac.compare_digest(given.encode(), token.encode()):
        return 403, FORBIDDEN
    return None
