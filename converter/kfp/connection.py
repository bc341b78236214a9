"""Where the Kubeflow Pipelines API is and how to authenticate to it.

Each setting comes from the first place that has it: command-line flags, then the environment, then a
config file (``$CELLPIPE_HOME/kfp.yaml``, else ``~/.config/cellpipe/kfp.yaml``; see docs/kubeflow.md)::

    host: https://kubeflow.example.com/pipeline
    namespace: kubeflow-user-example-com
    experiment: notebooks          # default experiment (after --experiment and the notebook's own)
    auth: cookie                   # token | in-cluster | cookie | none; default: whatever is available
    token_file: ~/.config/cellpipe/kfp-token
    cookie_file: ~/.config/cellpipe/kfp-cookie
    ca_cert: /etc/ssl/certs/company-ca.pem
    verify_ssl: true

Credentials are only ever read: from ``KF_PIPELINES_TOKEN`` / ``KF_PIPELINES_COOKIE``, from the files
the config names, or from the in-cluster service-account token file (re-read on every request, as the
kubelet rotates it). The config file holds paths to credentials, never credentials, so it can be shared.
A `Connection`'s repr hides them, and nothing here writes them anywhere.

`probe` asks the API's healthz endpoint once with a short timeout before anything else, so an
unreachable host, a login redirect or a rejected credential is one clear line within seconds instead of
the stock client's ~20 s of retries and a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import yaml

from converter.errors import CellpipeError
from converter.store.workspace import HOME_VARIABLE

if TYPE_CHECKING:
    import kfp

AuthMode = Literal["token", "in-cluster", "cookie", "none"]
AUTH_MODES: tuple[AuthMode, ...] = ("token", "in-cluster", "cookie", "none")

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"  # the variable KFP's own SDK and CLI read
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIE_ENV = "KF_PIPELINES_COOKIE"
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # KFP's own override of the in-cluster token path
IN_CLUSTER_TOKEN_FILE = Path("/var/run/secrets/kubeflow/pipelines/token")
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"  # KFP's in-cluster service
DEFAULT_SESSION_COOKIE = "authservice_session"  # Kubeflow's oidc-authservice behind Dex
PROBE_TIMEOUT_SECONDS = 5.0
_CONFIG_KEYS = frozenset(
    {"host", "namespace", "experiment", "auth", "token_file", "cookie_file", "ca_cert", "verify_ssl"}
)


@dataclass(frozen=True)
class Connection:
    """A resolved KFP endpoint with its credentials (never shown by repr)."""

    host: str
    auth: AuthMode
    namespace: str | None = None
    default_experiment: str | None = None
    ca_cert: str | None = None
    verify_ssl: bool = True
    origin: str = ""  # where the host came from, for messages
    token: str | None = field(default=None, repr=False)
    cookie: str | None = field(default=None, repr=False)
    token_file: Path | None = None  # in-cluster: read at every request

    @property
    def display_host(self) -> str:
        """The host without any user:password@ part: safe for messages, events and the run store."""
        parts = urllib.parse.urlsplit(self.host)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def headers(self) -> dict[str, str]:
        """The authentication headers every API request carries."""
        if self.auth == "token" and self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.auth == "in-cluster" and self.token_file is not None:
            return {"Authorization": f"Bearer {_read_secret(self.token_file, 'in-cluster token file')}"}
        if self.auth == "cookie" and self.cookie:
            return {"Cookie": self.cookie}
        return {}

    def client(self) -> kfp.Client:
        """A real `kfp.Client` for this connection."""
        import kfp
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        options: dict[str, Any] = {"host": self.host, "verify_ssl": self.verify_ssl}
        if self.namespace:
            options["namespace"] = self.namespace
        if self.ca_cert:
            options["ssl_ca_cert"] = self.ca_cert
        if self.auth == "token":
            options["existing_token"] = self.token
        elif self.auth == "cookie":
            options["cookies"] = self.cookie
        elif self.auth == "in-cluster" and self.token_file is not None:
            options["credentials"] = ServiceAccountTokenVolumeCredentials(path=str(self.token_file))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
            return kfp.Client(**options)


@dataclass(frozen=True)
class Healthz:
    multi_user: bool


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """$CELLPIPE_HOME/kfp.yaml if it exists, else ~/.config/cellpipe/kfp.yaml."""
    env = os.environ if env is None else env
    home = env.get(HOME_VARIABLE)
    if home:
        candidate = Path(home).expanduser() / "kfp.yaml"
        if candidate.is_file():
            return candidate
    return Path.home() / ".config" / "cellpipe" / "kfp.yaml"


def load_config(path: Path) -> dict[str, Any]:
    """The config file's settings; {} when there is none. Unknown keys are errors (typos would be silent)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise CellpipeError(f"{path}: cannot read the KFP config file ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CellpipeError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if data is None:
        return {}
    return check_settings(data, path)


def check_settings(data: object, where: str | Path) -> dict[str, Any]:
    """`data` as connection settings (the config file's keys), or a CellpipeError naming `where`."""
    if not isinstance(data, dict):
        raise CellpipeError(f"{where}: the KFP config holds key: value settings, not a {type(data).__name__}")
    if "token" in data or "cookie" in data:
        raise CellpipeError(
            f"{where}: keep credentials out of the config file: name a file holding them with "
            f"token_file / cookie_file, or set {TOKEN_ENV} / {COOKIE_ENV}"
        )
    unknown = sorted(set(map(str, data)) - _CONFIG_KEYS)
    if unknown:
        raise CellpipeError(
            f"{where}: unknown setting{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_CONFIG_KEYS))})"
        )
    return data


def named_endpoint(name: str, settings: Mapping[str, Any]) -> Connection:
    """The connection of a named endpoint (the Jupyter server's ``c.Cellpipe.kfp_endpoints``).

    Built from its own settings only, never from the environment or the config file: its host is
    the one its settings name, and the only credentials it sends are the ones they name
    (token_file, cookie_file, or the in-cluster token with ``auth: in-cluster``).
    """
    where = f"KFP endpoint {name!r}"
    config = check_settings(dict(settings), where)
    if not _str(config, "host", where):
        raise CellpipeError(f"{where}: host is required")
    return resolve(env={}, settings=config, source=where)


def resolve(
    *,
    host: str | None = None,
    namespace: str | None = None,
    auth: str | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    settings: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> Connection:
    """The connection flags, environment and config file describe; CellpipeError when it is incomplete.

    `settings` (checked, see `check_settings`) stand in for the config file; `source` names them in messages.
    """
    env = os.environ if env is None else env
    path: str | Path
    if settings is not None:
        path, config = source or "the KFP settings", dict(settings)
    else:
        path = config_file if config_file is not None else config_path(env)
        config = load_config(path)
    token_file = Path(env.get(SA_TOKEN_PATH_ENV) or IN_CLUSTER_TOKEN_FILE)

    mode = auth or _str(config, "auth", path)
    if mode is not None and mode not in AUTH_MODES:
        raise CellpipeError(f"unknown auth mode {mode!r} (use one of: {', '.join(AUTH_MODES)})")
    token = env.get(TOKEN_ENV) or _secret_from(config, "token_file", path)
    cookie = env.get(COOKIE_ENV) or _secret_from(config, "cookie_file", path)
    if mode is None:
        if token and cookie:
            raise CellpipeError(
                f"both a token and a session cookie are configured ({TOKEN_ENV}/token_file and "
                f"{COOKIE_ENV}/cookie_file): choose one with --auth token or --auth cookie"
            )
        mode = "token" if token else "cookie" if cookie else "in-cluster" if token_file.is_file() else "none"
    resolved_mode = cast(AuthMode, mode)
    if resolved_mode == "token" and not token:
        raise CellpipeError(f"--auth token needs a token: set {TOKEN_ENV} or token_file in {path}")
    if resolved_mode == "cookie" and not cookie:
        raise CellpipeError(
            f"--auth cookie needs a session cookie: set {COOKIE_ENV}={DEFAULT_SESSION_COOKIE}=... "
            f"or cookie_file in {path}"
        )
    if resolved_mode == "in-cluster" and not token_file.is_file():
        raise CellpipeError(
            f"--auth in-cluster needs the service-account token file {token_file} "
            "(mount a projected token with audience pipelines.kubeflow.org)"
        )

    origin = "--host"
    if not host:
        host, origin = env.get(ENDPOINT_ENV), ENDPOINT_ENV
    if not host:
        host, origin = _str(config, "host", path), str(path)
    if not host and resolved_mode == "in-cluster":
        host, origin = IN_CLUSTER_HOST, "the in-cluster default"
    if not host:
        raise CellpipeError(
            f"no Kubeflow Pipelines host: give --host URL, set {ENDPOINT_ENV}, or put host: in {path}"
        )
    host = host.strip().rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise CellpipeError(
            f"the KFP host {host!r} (from {origin}) needs a scheme: http://{host} or https://{host}"
        )

    if not namespace:
        namespace = env.get(NAMESPACE_ENV) or _str(config, "namespace", path)
    if not namespace and resolved_mode == "in-cluster" and IN_CLUSTER_NAMESPACE_FILE.is_file():
        namespace = IN_CLUSTER_NAMESPACE_FILE.read_text(encoding="utf-8").strip() or None

    verify = config.get("verify_ssl", True)
    if not isinstance(verify, bool):
        raise CellpipeError(f"{path}: verify_ssl is true or false, not {verify!r}")
    ca_cert = _str(config, "ca_cert", path)
    return Connection(
        host=host,
        auth=resolved_mode,
        namespace=namespace or None,
        default_experiment=_str(config, "experiment", path),
        ca_cert=str(Path(ca_cert).expanduser()) if ca_cert else None,
        verify_ssl=verify,
        origin=origin,
        token=token if resolved_mode == "token" else None,
        cookie=_cookie_header(cookie) if resolved_mode == "cookie" and cookie else None,
        token_file=token_file if resolved_mode == "in-cluster" else None,
    )


def _str(config: Mapping[str, Any], key: str, path: str | Path) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CellpipeError(f"{path}: {key} must be a non-empty string")
    return value.strip()


def _secret_from(config: Mapping[str, Any], key: str, path: str | Path) -> str | None:
    name = _str(config, key, path)
    return _read_secret(Path(name).expanduser(), f"{key} named in {path}") if name else None


def _read_secret(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise CellpipeError(f"cannot read the {what}: {path} ({error.strerror})") from None
    if not value:
        raise CellpipeError(f"the {what} is empty: {path}")
    return value


def _cookie_header(value: str) -> str:
    """`authservice_session=...` as given, or a bare session value under Kubeflow's default cookie name."""
    value = value.strip()
    if value.lower().startswith("cookie:"):
        value = value[len("cookie:") :].strip()
    return value if "=" in value else f"{DEFAULT_SESSION_COOKIE}={value}"


# ---------------------------------------------------------------------- probing


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A login redirect is an answer to report, not a page to fetch."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def probe(connection: Connection, timeout: float | None = None) -> Healthz:
    """One quick healthz request: the host answers as a KFP API and accepts the credentials, or a user error.

    `timeout` defaults to PROBE_TIMEOUT_SECONDS (read at call time, so tests can shorten it).
    """
    timeout = PROBE_TIMEOUT_SECONDS if timeout is None else timeout
    where = f"Kubeflow Pipelines at {connection.display_host} (host from {connection.origin})"
    url = f"{connection.host}/apis/v2beta1/healthz"
    request = urllib.request.Request(url, headers={"Accept": "application/json", **connection.headers()})
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=connection.ca_cert)
        if not connection.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(65536)
            kind = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        raise CellpipeError(f"cannot use {where}: {_http_problem(connection, error)}") from None
    except urllib.error.URLError as error:
        raise CellpipeError(f"cannot reach {where}: {_network_problem(error.reason, timeout)}") from None
    except TimeoutError:
        raise CellpipeError(f"cannot reach {where}: no answer within {timeout:g} s") from None
    except OSError as error:
        raise CellpipeError(f"cannot reach {where}: {_network_problem(error, timeout)}") from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        shown = kind.split(";")[0] or "no content type"
        raise CellpipeError(
            f"cannot use {where}: its healthz answer is not the KFP API's JSON ({shown}); "
            "the host should be the API root, e.g. http://localhost:8080 for a port-forward"
        )
    return Healthz(multi_user=bool(data.get("multi_user", False)))


def _network_problem(reason: object, timeout: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the address right? a port-forward still running?)"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return "unknown host name"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({reason.verify_message}); set ca_cert in the KFP config file"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error ({reason.reason or reason})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def _http_problem(connection: Connection, error: urllib.error.HTTPError) -> str:
    status = error.code
    if status in (301, 302, 303, 307, 308):
        location = urllib.parse.urlsplit(error.headers.get("Location", ""))
        target = location.netloc or connection.display_host
        return (
            f"it redirects to a login page ({target}{location.path}): the deployment is behind Dex/OIDC; "
            f"log in with a browser and set {COOKIE_ENV}={DEFAULT_SESSION_COOKIE}=<cookie value>"
        )
    if status == 401:
        hints = {
            "none": f"it needs credentials: set {TOKEN_ENV}, or {COOKIE_ENV} for a Dex login",
            "token": "it rejected the token (401 Unauthorized; expired?)",
            "cookie": "it rejected the session cookie (401 Unauthorized; log in again for a fresh one)",
            "in-cluster": "it rejected the in-cluster service-account token (401 Unauthorized)",
        }
        return hints[connection.auth]
    if status == 403:
        scope = f" in namespace {connection.namespace!r}" if connection.namespace else ""
        return f"access denied (403 Forbidden): the credentials are not allowed to use KFP{scope}"
    if status == 404:
        return (
            "no KFP API there (healthz answered 404): the host should be the API root, "
            "e.g. http://localhost:8080 or https://HOST/pipeline"
        )
    return f"healthz answered HTTP {status} {error.reason}"
