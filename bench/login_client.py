"""One clerk's browser, reduced to the three API calls of a login, over plain asyncio.

A hand-written HTTP/1.1 client (one keep-alive connection per clerk, Content-Length
bodies only) rather than httpx: 500 httpx clients would cost the load generator, which
shares the machine's two cores with the broker, more CPU than the broker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

REQUEST_TIMEOUT_S = 60.0
MAX_HEADER_BYTES = 16384


class ClerkError(Exception):
    """A step of the login failed; the message names the step and what came back."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        if not isinstance(data, dict):
            raise ClerkError(f"expected a JSON object, got {self.body[:200]!r}")
        return data


class HttpConnection:
    """A keep-alive HTTP/1.1 connection to one loopback server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, host: str, port: int, source: str | None = None) -> HttpConnection:
        """A connection to host:port, from the local address `source` if given."""
        reader, writer = await asyncio.open_connection(
            host, port, local_addr=(source, 0) if source else None)
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, path: str, headers: dict[str, str],
                      body: bytes = b"") -> Reply:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return await asyncio.wait_for(self._read_reply(), REQUEST_TIMEOUT_S)

    async def _read_reply(self) -> Reply:
        head = await self._reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            raise ClerkError("reply header too large")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            raise ClerkError(f"bad status line {status_line!r}") from None
        headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                k = k.strip().lower()
                # several Set-Cookie lines: keep them all, one per line
                headers[k] = f"{headers[k]}\n{v.strip()}" if k in headers else v.strip()
        if "chunked" in headers.get("transfer-encoding", ""):
            raise ClerkError("chunked replies are not supported by this client")
        body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        return Reply(status, headers, body)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):  # the server hung up first: closed either way
            await self._writer.wait_closed()


@dataclass
class ClerkResult:
    username: str
    started: float  # time.perf_counter() when the clerk pressed "sign in"
    login_s: float = 0.0  # POST /api/session
    pools_s: float = 0.0  # GET /api/pools
    connect_s: float = 0.0  # POST /api/pools/{pool}/connect, up to the console token
    total_s: float = 0.0  # sign-in pressed -> console token in hand
    desktop: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def _cookie(headers: dict[str, str], name: str) -> str:
    for line in headers.get("set-cookie", "").split("\n"):
        first = line.split(";", 1)[0].strip()
        if first.startswith(name + "="):
            return first.split("=", 1)[1]
    return ""


async def clerk_login(host: str, port: int, origin: str, cookie_name: str, username: str,
                      password: str, pool: str, source: str | None = None) -> ClerkResult:
    """Sign in, list the pools, connect to `pool`: the whole path to a console token,
    from the local address `source` (the clerk's thin client) if given.
    Never raises: a failure is recorded in the result's `error`."""
    result = ClerkResult(username, time.perf_counter())
    conn: HttpConnection | None = None
    step = "connect to broker"
    try:
        conn = await HttpConnection.open(host, port, source)
        step = "POST /api/session"
        t = time.perf_counter()
        reply = await conn.request("POST", "/api/session", {
            "Origin": origin, "Content-Type": "application/json"},
            json.dumps({"username": username, "password": password}).encode())
        result.login_s = time.perf_counter() - t
        if reply.status != 200:
            raise ClerkError(f"{reply.status} {reply.body[:200]!r}")
        csrf = str(reply.json()["csrf"])
        session = _cookie(reply.headers, cookie_name)
        if not session:
            raise ClerkError("no session cookie")
        cookie = {"Cookie": f"{cookie_name}={session}", "Origin": origin}
        step = "GET /api/pools"
        t = time.perf_counter()
        reply = await conn.request("GET", "/api/pools", cookie)
        result.pools_s = time.perf_counter() - t
        if reply.status != 200:
            raise ClerkError(f"{reply.status} {reply.body[:200]!r}")
        if pool not in [p.get("id") for p in reply.json().get("pools", [])]:
            raise ClerkError(f"pool {pool!r} not listed: {reply.body[:200]!r}")
        step = f"POST /api/pools/{pool}/connect"
        t = time.perf_counter()
        reply = await conn.request("POST", f"/api/pools/{pool}/connect",
                                   {**cookie, "X-CSRF-Token": csrf})
        result.connect_s = time.perf_counter() - t
        if reply.status != 200:
            raise ClerkError(f"{reply.status} {reply.body[:200]!r}")
        body = reply.json()
        if not str(body.get("console", "")).startswith("/console/"):
            raise ClerkError(f"no console token in {reply.body[:200]!r}")
        result.desktop = str(body["desktop"])
        result.total_s = time.perf_counter() - result.started
    except (ClerkError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            TimeoutError, ValueError, KeyError) as e:
        result.error = f"{step}: {type(e).__name__}: {e}"
    finally:
        if conn is not None:
            await conn.close()
    return result
