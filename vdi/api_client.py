"""The `vdi` command's client of the broker's API: where the API is and the personal API
token to call it with (docs/api-tokens.md), and the requests themselves.

Configured by `VDI_API_URL` and `VDI_API_TOKEN` (both, or neither), else by the file
`vdi login` writes: `$VDI_API_CONFIG`, or `vdi/api.json` under `$XDG_CONFIG_HOME`
(default `~/.config`), readable by its owner only (0600, in a 0700 folder). The token
never goes on a command line (other users see those) nor to a plain-http broker other
than one on this machine. Every failure is an ApiError whose message says what to do.

The requests go through `Transport`, one function a test can replace (httpx's habit);
the real one is urllib's, with redirects refused (urllib would send the token along to
wherever a redirect points).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

TIMEOUT_S = 30.0


class ApiError(Exception):
    """A call of the API failed; the message is for the person at the terminal. `status`:
    the HTTP status (0 when the broker was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ApiConfig:
    url: str  # the broker's public address, e.g. https://vdi.district.example
    token: str
    source: str  # where they came from: "environment" or the file's path

    def __repr__(self) -> str:  # never the token, should a traceback print this
        return f"ApiConfig(url={self.url!r}, token='***', source={self.source!r})"


def config_path(environ: Mapping[str, str]) -> Path:
    if environ.get("VDI_API_CONFIG"):
        return Path(environ["VDI_API_CONFIG"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vdi" / "api.json"


def load_config(environ: Mapping[str, str]) -> ApiConfig | None:
    """The API to call, or None when none is configured (the commands then work on the
    database directly). Raises ApiError for half a configuration or an unsafe file."""
    url, token = environ.get("VDI_API_URL", ""), environ.get("VDI_API_TOKEN", "")
    if url or token:
        if not (url and token):
            raise ApiError("set both VDI_API_URL and VDI_API_TOKEN (or neither)")
        return ApiConfig(check_url(url), token.strip(), "environment")
    path = config_path(environ)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ApiError(f"{path} may be read by others: run 'chmod 600 {path}', or "
                       "'vdi logout' and 'vdi login' again (and revoke the token if "
                       "others may have read it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ApiConfig(check_url(str(data["url"])), str(data["token"]), str(path))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ApiError(f"{path} cannot be read ({e}): run 'vdi login' again") from e


def save_config(path: Path, url: str, token: str) -> None:
    """Write the file only its owner may read (created so: never readable for a moment)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file keeps its mode through O_TRUNC
        json.dump({"url": url, "token": token}, f)


def check_url(url: str) -> str:
    """The broker's address, checked: https, or http to this machine only (the token
    would cross the network in clear). Raises ApiError."""
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(f"{url!r} is not the broker's address (e.g. https://vdi.example)")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ApiError(f"{url}: the token would cross the network unencrypted; use the "
                       "broker's https address")
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


Transport = Callable[[Request], Response]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Message, newurl: str) -> None:
        return None  # the 3xx comes back as an HTTPError: reported, not followed


_OPENER = urllib.request.build_opener(_NoRedirects())


def urllib_transport(request: Request, timeout_s: float = TIMEOUT_S) -> Response:
    """Raises ApiError when the broker cannot be reached."""
    if not request.url.startswith(("https://", "http://")):  # never file: or ftp:
        raise ApiError(f"not a broker's address: {request.url}")
    req = urllib.request.Request(request.url, data=request.body,  # noqa: S310 (checked)
                                 headers=request.headers, method=request.method)
    try:
        with _OPENER.open(req, timeout=timeout_s) as r:
            return Response(r.status, r.headers.get("Content-Type", ""), r.read())
    except urllib.error.HTTPError as e:
        with e:
            return Response(e.code, e.headers.get("Content-Type", ""), e.read())
    except (http.client.HTTPException, OSError) as e:  # URLError, timeouts, TLS, resets
        reason = getattr(e, "reason", e)
        origin = urllib.parse.urlsplit(request.url)
        raise ApiError(f"cannot reach the broker at {origin.scheme}://{origin.netloc}: "
                       f"{reason}") from e


class ApiClient:
    def __init__(self, config: ApiConfig, *, transport: Transport = urllib_transport,
                 language: str = "en") -> None:
        self.config = config
        self._transport = transport
        self._language = language

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return _json(self.call("GET", path, params=params))

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return _json(self.call("POST", path, body=body))

    def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return _json(self.call("PATCH", path, body=body))

    def delete(self, path: str) -> dict[str, Any]:
        return _json(self.call("DELETE", path))

    def text(self, path: str, params: Mapping[str, str] | None = None) -> str:
        return self.call("GET", path, params=params).body.decode("utf-8")

    def call(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
             body: Mapping[str, Any] | None = None) -> Response:
        """One request with the token. Raises ApiError for anything but a 2xx answer."""
        url = self.config.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Authorization": f"Bearer {self.config.token}",
                   "Accept-Language": self._language, "User-Agent": "vdi-cli"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        r = self._transport(Request(method, url, headers, data))
        if 200 <= r.status < 300:
            return r
        raise ApiError(_refusal(r, self.config), r.status)


def _json(r: Response) -> dict[str, Any]:
    try:
        data = json.loads(r.body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(f"the broker's answer is not what the API promises (HTTP {r.status}, "
                       f"{r.content_type or 'no type'})", r.status)
    return data


def _refusal(r: Response, config: ApiConfig) -> str:
    """The broker's refusal, and what to do about it."""
    code, message = "", ""
    if r.content_type.startswith("application/json"):
        try:
            data = json.loads(r.body)
            code, message = str(data.get("error", "")), str(data.get("message", ""))
        except (ValueError, AttributeError):
            pass
    said = f"{message} ({code})" if code else f"HTTP {r.status}"
    if r.status == 401:
        where = "VDI_API_TOKEN" if config.source == "environment" else "'vdi login'"
        return (f"the broker refused the API token: {said}. Make a new token on the "
                f"broker's API tokens page ({config.url}/tokens) and give it to {where}.")
    if r.status == 403:
        return f"not allowed: {said}"
    if 300 <= r.status < 400:
        return f"the broker answered with a redirect (HTTP {r.status}): is {config.url} " \
               "the broker's address?"
    if r.status == 404 and not code:
        return f"{config.url} has no such API (HTTP 404): is it the broker's address?"
    return f"the broker refused: {said}" if r.status < 500 else \
        f"the broker failed: {said}"


def language_of(environ: Mapping[str, str]) -> str:
    """The broker answers in zh-CN for a Chinese locale, else in English."""
    locale = environ.get("LC_ALL") or environ.get("LC_MESSAGES") or environ.get("LANG", "")
    return "zh-CN" if locale.lower().startswith("zh") else "en"
