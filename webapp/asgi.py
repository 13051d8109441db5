"""ASGI entry point: HTTP through Django, websockets through Channels.

HTTP requests pass the body limits first (webapp.body_limits: 413 over the
size limit, 408 when the body is too slow); under daphne the same limits
apply inside the server, before a body is read (webapp.daphne_limits).
Websockets pass the exact origin check (webapp.origins) and carry the Django
session and user, so a socket sees exactly the jobs its page sees.
"""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from webapp.body_limits import BodyLimits  # noqa: E402
from webapp.jobs.routing import websocket_urlpatterns  # noqa: E402
from webapp.origins import OriginValidator  # noqa: E402
from webapp.status.routing import websocket_urlpatterns as status_websocket_urlpatterns  # noqa: E402

if "daphne.server" in sys.modules:  # served by daphne: refuse bodies before daphne reads them
    from webapp import daphne_limits

    daphne_limits.install()

application = ProtocolTypeRouter(
    {
        "http": BodyLimits(django_asgi_app),
        "websocket": OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns + status_websocket_urlpatterns))),
    }
)
