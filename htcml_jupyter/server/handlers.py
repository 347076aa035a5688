"""The REST endpoints of the sidebar, under ``<base_url>/htcml/``.

``GET maps`` lists every map and sweep of the server user's map root;
``POST maps/<name>/cancel`` and ``POST maps/<name>/retry`` act on one map.  Each is a
jupyter_server :class:`APIHandler`: a request needs the server's token (or login
cookie), and a cookie-authenticated POST needs the XSRF token as well.  Past
authentication, the server's ``Authorizer`` decides, on the resource ``"htcml"``
(:data:`AUTH_RESOURCE`): listing is a ``"read"``, cancel and retry are ``"write"``; a
refused request gets 403.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop

from ..engine.errors import HTCMLError, MapNotFound
from .catalog import MapBusy, MapCatalog

#: The key of the catalog in the tornado application's settings.
CATALOG_SETTING = "htcml_map_catalog"
#: The resource name the server's ``Authorizer`` is asked about for every request.
AUTH_RESOURCE = "htcml"

T = TypeVar("T")


class _CatalogHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def catalog(self) -> MapCatalog:
        catalog: MapCatalog = self.settings[CATALOG_SETTING]
        return catalog

    async def _in_thread(self, work: Callable[[], T]) -> T:
        """Run ``work`` off the event loop (it reads event logs and may ask the schedd),
        with its errors turned into HTTP answers that name the problem."""
        try:
            return await IOLoop.current().run_in_executor(None, work)
        except MapNotFound as exc:
            raise web.HTTPError(404, str(exc)) from exc
        except MapBusy as exc:
            raise web.HTTPError(409, str(exc)) from exc
        except ValueError as exc:  # a name that is not a map name
            raise web.HTTPError(400, str(exc)) from exc
        except HTCMLError as exc:  # e.g. the pool cannot be reached
            raise web.HTTPError(502, f"{type(exc).__name__}: {exc}") from exc

    def _reply(self, body: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class MapsHandler(_CatalogHandler):
    """``GET /htcml/maps``: ``{"root": ..., "maps": [summary, ...]}``, oldest first."""

    @web.authenticated
    @authorized("read", resource=AUTH_RESOURCE)
    async def get(self) -> None:
        summaries = await self._in_thread(self.catalog.summaries)
        self._reply({"root": str(self.catalog.root),
                     "maps": [s.as_json() for s in summaries]})


class MapActionHandler(_CatalogHandler):
    """``POST /htcml/maps/<name>/cancel`` or ``.../retry``: ``{"map": summary, ...}``."""

    @web.authenticated
    @authorized("write", resource=AUTH_RESOURCE)
    async def post(self, name: str, action: str) -> None:
        catalog = self.catalog
        # Checked before any work is queued: a bad name never reaches the file system.
        await self._in_thread(lambda: catalog.folder_of(name))
        if action == "cancel":
            summary = await self._in_thread(lambda: catalog.cancel(name))
            self._reply({"action": action, "map": summary.as_json()})
        else:
            summary, items = await self._in_thread(lambda: catalog.retry(name))
            self._reply({"action": action, "map": summary.as_json(), "items": items})


def handlers(base_url: str) -> list[tuple[str, type[APIHandler]]]:
    """The URL patterns of the endpoints under ``base_url``.

    The name pattern takes any characters (``/`` too), so that every name that is not
    a map name gets a 400 that says why, rather than a 404 for an unknown URL."""
    return [
        (url_path_join(base_url, "htcml", "maps"), MapsHandler),
        (url_path_join(base_url, "htcml", "maps", "(.*)", "(cancel|retry)"), MapActionHandler),
    ]
