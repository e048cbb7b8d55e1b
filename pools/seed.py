"""The identity of each desktop: a cloud-init NoCloud seed, the standard that cloud-init
(Linux) and cloudbase-init (Windows) read on first boot. A small ISO 9660 volume labelled
`cidata` holding `meta-data` (the instance id and hostname) and `user-data` (the pool's
customisation data, e.g. a domain-join answer, as the admin gave it), attached to the
domain as a CD-ROM. Pure: bytes in, bytes out."""

from __future__ import annotations

import io
import re

import pycdlib

SEED_LABEL = "cidata"
# A Windows computer name holds at most 15 characters (NetBIOS); Linux takes that too.
HOSTNAME_MAX = 15
_NOT_HOST = re.compile(r"[^a-z0-9-]+")


def desktop_hostname(desktop_id: str) -> str:
    """The desktop's hostname: from its id (pool id and a suffix), the same across every
    revert, at most 15 letters, digits and '-', never starting or ending with '-'."""
    name = _NOT_HOST.sub("-", desktop_id.lower()).strip("-") or "desktop"
    if len(name) > HOSTNAME_MAX:
        head, _, tail = name.rpartition("-")
        tail = tail[-8:] if tail else name[-8:]
        name = f"{head[:HOSTNAME_MAX - len(tail) - 1].rstrip('-')}-{tail}".strip("-")
    return name[:HOSTNAME_MAX].strip("-")


def meta_data(instance_id: str, hostname: str) -> str:
    """NoCloud meta-data (YAML; both values are quoted JSON strings, which YAML reads)."""
    import json

    return (f"instance-id: {json.dumps(instance_id)}\n"
            f"local-hostname: {json.dumps(hostname)}\n")


def nocloud_seed(instance_id: str, hostname: str, user_data: str = "") -> bytes:
    """The ISO image of the seed. An empty user-data is written as an empty cloud-config."""
    files = {"meta-data": meta_data(instance_id, hostname).encode(),
             "user-data": (user_data or "#cloud-config\n").encode()}
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, vol_ident=SEED_LABEL, joliet=3, rock_ridge="1.09")
    for name, data in files.items():
        iso.add_fp(io.BytesIO(data), len(data), f"/{name.replace('-', '').upper()}.;1",
                   rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()
