"""Blocking calls (database, directory) off the event loop, on threads of their own."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
# Threads for database calls: the SQLite engine's pool holds 8 + 8 connections,
# PostgreSQL's 10 + 10 (vdi.db.make_engine).
DB_THREADS = 16
DIRECTORY_THREADS = 16


class Blocking:
    """Database calls get threads of their own, as many as the engine has connections:
    asyncio's default executor (min(32, cores + 4) threads, 6 on two cores) is shared
    with everything else that uses asyncio.to_thread, and would leave requests queueing
    for a thread while database connections sit idle. Directory calls get their own too,
    so a slow directory cannot starve the database's."""

    def __init__(self) -> None:
        self._db = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="db")
        self._directory = ThreadPoolExecutor(DIRECTORY_THREADS, thread_name_prefix="ldap")

    async def db(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) on a database thread; the caller awaits it without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self._db, functools.partial(fn, *args))

    async def directory(self, fn: Callable[..., T], *args: object, deadline_s: float) -> T:
        """fn(*args) on a directory thread; TimeoutError after deadline_s even if the
        library's own timeouts fail us (the thread is left to finish on its own)."""
        fut = asyncio.get_running_loop().run_in_executor(
            self._directory, functools.partial(fn, *args))
        return await asyncio.wait_for(fut, deadline_s)

    def close(self) -> None:
        self._directory.shutdown(wait=False, cancel_futures=True)
        self._db.shutdown(wait=True, cancel_futures=True)
