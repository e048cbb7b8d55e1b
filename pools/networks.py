"""The departments' networks the broker defines on its hosts, as the database records
them (pools.libvirt.network_xml builds each one's document)."""

from __future__ import annotations

import ipaddress

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pools.hypervisor import NetworkSpec
from pools.libvirt.network_xml import check_network
from vdi.domain import Pool, utc_now
from vdi.models import NetworkRow


class NetworkError(ValueError):
    """A network definition is refused; the message says why."""


class NetworkStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def all(self) -> list[NetworkSpec]:
        with self._sessions() as s:
            return [NetworkSpec(r.name, r.subnet, r.mode) for r in
                    s.scalars(select(NetworkRow).order_by(NetworkRow.name))]

    def get(self, name: str) -> NetworkSpec | None:
        with self._sessions() as s:
            row = s.get(NetworkRow, name)
            return NetworkSpec(row.name, row.subnet, row.mode) if row else None

    def save(self, spec: NetworkSpec) -> bool:
        """Create a network (saving one as it is changes nothing); True when new. Raises
        NetworkError for a bad spec, a changed subnet or mode (hosts keep what they
        defined), or a subnet that overlaps another network's (departments must not
        share addresses)."""
        try:
            net = check_network(spec)
        except ValueError as e:
            raise NetworkError(str(e)) from e
        with self._sessions.begin() as s:
            for other in s.scalars(select(NetworkRow).where(NetworkRow.name != spec.name)):
                if net.overlaps(ipaddress.IPv4Network(other.subnet)):
                    raise NetworkError(f"subnet {net} overlaps network {other.name} "
                                       f"({other.subnet})")
            row = s.get(NetworkRow, spec.name)
            new = row is None
            if row is not None and (row.subnet, row.mode) != (str(net), spec.mode):
                # the hosts keep the network they defined: a change would never reach them
                raise NetworkError(f"network {spec.name} exists as {row.mode} {row.subnet}; "
                                   "give the new one another name and move the pools to it")
            if row is None:
                row = NetworkRow(name=spec.name, created_at=utc_now())
                s.add(row)
            row.subnet, row.mode = str(net), spec.mode
            return new

    def for_pool(self, pool: Pool) -> NetworkSpec | None:
        """The broker's network a pool's desktops join, if it names one of them."""
        kind, _, name = pool.network.partition(":")
        return self.get(name) if kind == "network" else None
