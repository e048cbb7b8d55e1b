"""The audit trail's hash chain: each record carries the hash of the one before it and a
hash of its own content chained to that, so an edited, deleted or reordered record shows.

Record N's hash = H(prev_hash + "\\n" + canonical(N)), H being SM3 (GB/T 32905) where the
OpenSSL that `cryptography` uses offers it, else SHA-256; the name of H is stored with
each record, so a trail verifies whichever machine wrote it. The first record's
prev_hash is "". `canonical` is JSON of the record's fields, keys sorted: **never change
it** (a trail written with it must verify for as long as it is kept); a new encoding
would need a new algorithm name.

Pure: no database here (vdi.audit chains the rows as they are written; `verify` takes
the rows in id order).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

SM3, SHA256 = "sm3", "sha256"


@cache
def preferred_algorithm() -> str:
    """SM3 where this machine's OpenSSL offers it, else SHA-256."""
    try:
        h = hashes.Hash(hashes.SM3())
    except UnsupportedAlgorithm:
        return SHA256
    h.update(b"abc")  # GB/T 32905's own example: a broken SM3 is not used
    if h.finalize().hex() != ("66c7f0f462eeedd9d1f2d46bdc10e4e2"
                              "4167c4875cf2f7a2297da02b8f4ba8e0"):
        return SHA256
    return SM3


@dataclass(frozen=True)
class Content:
    """What a record says (everything but its hashes)."""

    id: int
    at: datetime
    actor: str
    role: str
    office: str | None
    action: str
    target: str
    source: str
    outcome: str
    detail: str


def canonical(c: Content) -> str:
    return json.dumps({"id": c.id, "at": c.at.isoformat(), "actor": c.actor, "role": c.role,
                       "office": c.office, "action": c.action, "target": c.target,
                       "source": c.source, "outcome": c.outcome, "detail": c.detail},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def chain_hash(algorithm: str, prev_hash: str, content: Content) -> str:
    """The record's hash (hex). Raises ValueError for an algorithm not known here, and
    UnsupportedAlgorithm when SM3 was used and this machine's OpenSSL lacks it."""
    if algorithm == SM3:
        h = hashes.Hash(hashes.SM3())
    elif algorithm == SHA256:
        h = hashes.Hash(hashes.SHA256())
    else:
        raise ValueError(f"unknown audit hash algorithm {algorithm!r}")
    h.update(prev_hash.encode() + b"\n" + canonical(content).encode())
    return h.finalize().hex()


@dataclass(frozen=True)
class Link:
    """A stored record as the verifier reads it."""

    content: Content
    algorithm: str | None
    prev_hash: str | None
    hash: str | None


@dataclass(frozen=True)
class Verdict:
    records: int
    problems: tuple[str, ...]
    last_id: int | None
    last_hash: str | None

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(links: Iterable[Link], limit: int = 50) -> Verdict:
    """Check a trail given in id order: every record's hash matches its content and the
    hash it names as its predecessor's, which must be the previous record's. Reports at
    most `limit` problems (the first ones)."""
    problems: list[str] = []
    prev: Link | None = None
    count = 0
    for link in links:
        count += 1
        rid = link.content.id
        if link.hash is None or link.algorithm is None or link.prev_hash is None:
            problems.append(f"record {rid}: carries no hash (written outside the product, "
                            "or its hash was removed)")
        else:
            try:
                expected = chain_hash(link.algorithm, link.prev_hash, link.content)
            except (ValueError, UnsupportedAlgorithm) as e:
                problems.append(f"record {rid}: cannot be checked here: {e}")
            else:
                if expected != link.hash:
                    problems.append(f"record {rid}: edited (its content does not match its "
                                    "hash)")
            want_prev = "" if prev is None else prev.hash
            if link.prev_hash != want_prev:
                what = ("is not the first record of the trail: the records before it were "
                        "deleted" if prev is None else
                        f"does not follow record {prev.content.id}: a record between them "
                        "was deleted, or the records were reordered")
                problems.append(f"record {rid}: {what}")
        prev = link
        if len(problems) >= limit:
            break
    return Verdict(count, tuple(problems[:limit]), prev.content.id if prev else None,
                   prev.hash if prev else None)
