"""Named Kubeflow Pipelines endpoints: the only places this server submits runs to.

The server's owner names them in the Jupyter config, with the settings of cellpipe's KFP config file
(docs/kubeflow.md) for each::

    c.Cellpipe.kfp_endpoints = {
        "prod": {"host": "https://kubeflow.example.com/pipeline", "namespace": "team-a",
                 "auth": "token", "token_file": "/etc/cellpipe/prod-token"},
        "dev": {"host": "http://ml-pipeline.kubeflow:8888", "auth": "in-cluster"},
    }

A browser picks one by name (``POST runs {"engine": "kfp", "endpoint": "prod"}``) and can list the
names, hosts and namespaces (``GET kfp/endpoints``), never credentials or the files holding them. It
can never name a host: the server only sends credentials to the hosts configured here (each endpoint
uses its own settings only, not the server's environment; `converter.kfp.connection.named_endpoint`).
Without an endpoint, a KFP run uses the server's own default connection (environment, config file).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any

from traitlets import Dict, Unicode
from traitlets.config import Configurable

from converter.errors import CellpipeError
from converter.kfp.connection import check_settings, named_endpoint


class Cellpipe(Configurable):
    """cellpipe's server extension settings (``c.Cellpipe.*`` in jupyter_server_config.py)."""

    kfp_endpoints = Dict(
        key_trait=Unicode(),
        value_trait=Dict(),
        default_value={},
        config=True,
        help="Named KFP endpoints runs may be submitted to: {name: {host, namespace, experiment, auth, "
        "token_file, cookie_file, ca_cert, verify_ssl}}. Browsers choose by name and never see credentials.",
    )


class KfpEndpoints:
    """The configured endpoints, checked once at start (a broken one is logged and left out)."""

    def __init__(self, configured: Mapping[str, Mapping[str, Any]], log: logging.Logger | None = None):
        self._settings: dict[str, dict[str, Any]] = {}
        for name, settings in configured.items():
            where = f"KFP endpoint {name!r}"
            try:
                checked = check_settings(dict(settings), where)
                if not isinstance(checked.get("host"), str) or not checked["host"].strip():
                    raise CellpipeError(f"{where}: host is required")
            except CellpipeError as error:
                (log or logging.getLogger(__name__)).error("cellpipe: %s; the endpoint is left out", error)
                continue
            self._settings[name] = checked

    @property
    def names(self) -> list[str]:
        return sorted(self._settings)

    def listing(self) -> list[dict[str, Any]]:
        """What a browser may see of each endpoint: no credentials, no file paths."""
        return [
            {
                "name": name,
                "host": _display_host(settings["host"]),
                "namespace": settings.get("namespace"),
                "experiment": settings.get("experiment"),
            }
            for name, settings in sorted(self._settings.items())
        ]

    def engine_options(self, engine: str, name: str | None) -> dict[str, Any]:
        """The engine options for a run on `engine` at endpoint `name` (None: the default connection)."""
        if name is None:
            return {}
        if engine != "kfp":
            raise CellpipeError(f"'endpoint' is for the kfp engine, not {engine!r}")
        settings = self._settings.get(name)
        if settings is None:
            known = ", ".join(self.names) or "none configured"
            raise CellpipeError(f"unknown KFP endpoint {name!r} (this server has: {known})")
        return {"connection": named_endpoint(name, settings)}


def _display_host(host: str) -> str:
    """The host without any user:password@ part."""
    parts = urllib.parse.urlsplit(host.strip())
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
