"""The Jupyter server extension behind the JupyterLab sidebar "HTCondor maps".

It lists the maps of the user the server runs as (their map root,
:func:`htcml_jupyter.paths.default_map_root`) and cancels or retries them, through
the same Python API a notebook uses.  Installing the package enables it
(``jupyter_server_config.d/htcml_jupyter.json``); ``jupyter server extension list``
shows it.
"""

from __future__ import annotations

from typing import Any

from ..paths import default_map_root
from .catalog import MapCatalog, MapSummary
from .handlers import CATALOG_SETTING, handlers

__all__ = ["MapCatalog", "MapSummary"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Where jupyter_server finds this extension."""
    return [{"module": "htcml_jupyter.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Add the ``/htcml/`` endpoints to a running Jupyter server."""
    catalog = MapCatalog(default_map_root())
    web_app = serverapp.web_app
    web_app.settings[CATALOG_SETTING] = catalog
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info("htcml_jupyter: the HTCondor maps sidebar lists maps under %s",
                       catalog.root)
