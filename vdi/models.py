"""SQLAlchemy 2 table definitions. Schema changes go through Alembic (vdi/migrations)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class PoolRow(Base):
    __tablename__ = "pools"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    image: Mapped[str] = mapped_column(String(64))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    min_ready: Mapped[int] = mapped_column(Integer)
    max_size: Mapped[int] = mapped_column(Integer)
    entitled_groups: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # the image version this pool runs; NULL: the image's released version
    image_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # host URIs the pool may place desktops on; empty: any host
    hosts: Mapped[list[str]] = mapped_column(JSON, default=list)
    # idle reclaim: calendar and policy per shift (pools.shifts); NULL: the defaults
    reclaim_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # spare levels over the day (pools.spares); NULL: min_ready all day
    spare_schedule: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the console its desktops get (vdi.domain.ConsoleKind)
    console_kind: Mapped[str] = mapped_column(String(16), default="vnc", server_default="vnc")
    # seconds a desktop's guest may take to come up before it is failed and replaced
    boot_timeout_s: Mapped[int] = mapped_column(Integer, default=300, server_default="300")
    secure_boot: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # its desktops' network: none, network:NAME, bridge:NAME, user (vdi.domain.Pool)
    network: Mapped[str] = mapped_column(String(80), default="none", server_default="none")
    # the customisation data its desktops' NoCloud seed carries as user-data
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the street office it serves (vdi.domain.Office); NULL: the district's
    office: Mapped[str | None] = mapped_column(String(32), nullable=True)


class OfficeRow(Base):
    """A street office (街道办): its clerks and the helpdesk members who serve it are
    known by their directory groups."""

    __tablename__ = "offices"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    clerk_groups: Mapped[list[str]] = mapped_column(JSON)
    helpdesk_groups: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ImageReleaseRow(Base):
    """Which version of a golden image the pools that follow it run (rollout, rollback)."""

    __tablename__ = "image_releases"
    image_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    previous_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    released_at: Mapped[datetime] = mapped_column(UtcDateTime())
    released_by: Mapped[str] = mapped_column(String(128))


class JobRow(Base):
    """Hypervisor work as persisted steps. `step` is the next step to run; every step is
    idempotent, so a broker that died during one runs it again after its lease ran out."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_not_before", "state", "not_before"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    desktop_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(16))
    step: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    not_before: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class HostRow(Base):
    """A libvirt host the broker places desktops on."""

    __tablename__ = "hosts"
    uri: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # where its desktops' consoles listen (an address of that host the broker reaches)
    graphics_listen: Mapped[str] = mapped_column(String(255))
    storage_pool: Mapped[str] = mapped_column(String(64))
    storage_dir: Mapped[str] = mapped_column(String(1024))
    log_dir: Mapped[str] = mapped_column(String(1024))
    # its storage_dir is shared with the other shared hosts (live migration, restart
    # of a dedicated desktop elsewhere when it fails)
    shared_storage: Mapped[bool] = mapped_column(Boolean)
    maintenance: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))  # unknown | up | down
    memory_mib: Mapped[int] = mapped_column(Integer)
    cpus: Mapped[int] = mapped_column(Integer)
    # the guest architectures it runs, comma-separated (x86_64,aarch64); None until seen
    arches: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    down_since: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # domains on it the broker did not make (seen at its last reconcile), for the alert
    foreign_domains: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class ImageRow(Base):
    """A golden image version as published into a host's storage pool: its disk volume
    there, whose content was read back and matched `digest` when it was published."""

    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_uri: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    disk_path: Mapped[str] = mapped_column(String(1024))
    disk_bytes: Mapped[int] = mapped_column(BigInteger)  # the size the guest sees
    # SHA-256 of the image's qcow2 file: publishing the same build again reuses the version
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    published_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ImageVersionRow(Base):
    """One imported build of a golden image: what it is, whichever hosts hold it."""

    __tablename__ = "image_versions"
    image_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    firmware: Mapped[str] = mapped_column(String(8))  # vdi.domain.Firmware
    os_family: Mapped[str] = mapped_column(String(16))  # vdi.domain.OsFamily
    arch: Mapped[str] = mapped_column(String(16))  # vdi.domain.Arch
    virtio: Mapped[bool] = mapped_column(Boolean)
    agent: Mapped[bool] = mapped_column(Boolean)
    boot_delay_s: Mapped[int] = mapped_column(Integer)
    secure_boot: Mapped[bool] = mapped_column(Boolean)
    disk_bytes: Mapped[int] = mapped_column(BigInteger)  # the size the guest sees
    file_bytes: Mapped[int] = mapped_column(BigInteger)  # the qcow2 file's size
    source: Mapped[str] = mapped_column(String(1024))  # the file it was imported from
    source_format: Mapped[str] = mapped_column(String(16))
    imported_by: Mapped[str] = mapped_column(String(128))
    imported_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DesktopRow(Base):
    __tablename__ = "desktops"
    __table_args__ = (
        # one desktop per user per pool; NULLs (unassigned) do not collide
        UniqueConstraint("pool_id", "assigned_user", name="uq_desktop_user_per_pool"),
        Index("ix_desktop_pool_state", "pool_id", "state"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id"))
    state: Mapped[str] = mapped_column(String(16))
    host_uri: Mapped[str] = mapped_column(String(255))
    domain_name: Mapped[str] = mapped_column(String(128), unique=True)
    image_version: Mapped[int] = mapped_column(Integer)
    assigned_user: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # the console the desktop's host reports (vdi.domain.ConsoleEndpoint)
    console_kind: Mapped[str] = mapped_column(String(16), default="vnc", server_default="vnc")
    console_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    console_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    assigned_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_input_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_disconnect_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # on | off | suspended (a dedicated desktop shut down or suspended while unused)
    power: Mapped[str] = mapped_column(String(16), default="on", server_default="on")
    # the guest's network addresses as its agent last told them (for admins and helpdesk)
    guest_addresses: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # a console is open: since when, and the last time a broker said it still is
    console_since: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    console_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # the idle warning shown to its clerk, and when the idle action runs
    warned_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    warning_deadline: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # consoles opened before this are closed by the broker holding them (a reclaim)
    kicked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class SessionRow(Base):
    """A server-side web session; the cookie carries the id, the table only its hash."""

    __tablename__ = "sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128), index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    groups: Mapped[list[str]] = mapped_column(JSON)
    csrf: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # when the directory last confirmed the user's account and groups (sign-in, re-check)
    checked_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ConsoleTokenRow(Base):
    __tablename__ = "console_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128))
    session_hash: Mapped[str] = mapped_column(String(64), index=True)
    desktop_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # how many websockets the grant may open (a SPICE console is one per channel), and
    # how many it did
    channels: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    uses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class AuditRow(Base):
    """Append-only (the database refuses UPDATE and DELETE) and hash-chained: ids and
    hashes are given by vdi.audit.chain_new_records as rows are written."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    office: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the actor's
    hash_alg: Mapped[str | None] = mapped_column(String(8), nullable=True)  # sm3 | sha256
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ReclaimRow(Base):
    """A desktop taken back (or powered down) because it was idle or abandoned: shown to
    admins, and to the clerk when they come back."""

    __tablename__ = "reclaims"
    __table_args__ = (Index("ix_reclaims_user_at", "username", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    desktop_id: Mapped[str] = mapped_column(String(64))
    pool_id: Mapped[str] = mapped_column(String(64))
    username: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))  # pools.reclaim.Action
    cause: Mapped[str] = mapped_column(String(16))  # pools.reclaim.Cause
    since: Mapped[datetime] = mapped_column(UtcDateTime())  # idle or gone since
    shift: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class ClaimRow(Base):
    """When a clerk got a desktop of a pool (the spare forecast learns from these)."""

    __tablename__ = "claims"
    __table_args__ = (Index("ix_claims_pool_at", "pool_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pool_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class NetworkRow(Base):
    """A department's network the broker defines on each host (pools.libvirt.network_xml)."""

    __tablename__ = "networks"
    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    subnet: Mapped[str] = mapped_column(String(43))
    mode: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ImageImportRow(Base):
    """An image import started through the API (broker.image_imports): its progress for
    the admin console. A row left `running` by a broker that died goes stale (its
    updated_at stops moving) and is reported as interrupted."""

    __tablename__ = "image_imports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(1024))
    state: Mapped[str] = mapped_column(String(16))  # running | done | failed
    stage: Mapped[str] = mapped_column(String(64))
    percent: Mapped[int] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class WaiterRow(Base):
    """A clerk waiting for a desktop of a pool (pools.waiters): first come, first served."""

    __tablename__ = "waiters"
    pool_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    since: Mapped[datetime] = mapped_column(UtcDateTime())
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LoginAttemptRow(Base):
    """One sign-in attempt counted against one throttle key (broker.auth.throttle): the
    folded typed user name ("u:...") or the client address ("a:..."). Rows older than
    the throttle's window are pruned by the throttle itself."""

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_key_at", "key", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class HelpdeskMessageRow(Base):
    """A message from the helpdesk to a clerk at their desktop, shown on the desktop's
    page until the clerk acknowledges it."""

    __tablename__ = "helpdesk_messages"
    __table_args__ = (Index("ix_helpdesk_messages_user", "username", "seen_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    desktop_id: Mapped[str] = mapped_column(String(64))
    pool_id: Mapped[str] = mapped_column(String(64))
    username: Mapped[str] = mapped_column(String(128))
    sender: Mapped[str] = mapped_column(String(128))
    sender_name: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class DesktopUseRow(Base):
    """One console use of a desktop: from a clerk's console opening to its closing (or
    the desktop being taken back). Metering adds these up per office and pool. The pool
    and its office are those of the time of use; `seen_at` follows the console's
    heartbeat, so a use whose broker died ends at its last sign of life."""

    __tablename__ = "desktop_uses"
    __table_args__ = (Index("ix_desktop_uses_started", "started_at"),
                      Index("ix_desktop_uses_open", "desktop_id", "ended_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    desktop_id: Mapped[str] = mapped_column(String(64))
    pool_id: Mapped[str] = mapped_column(String(64))
    office: Mapped[str | None] = mapped_column(String(64), nullable=True)
    username: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class AccessPolicyRow(Base):
    """The security administrator's access policy (broker.access_policy): one row,
    id 1, changed by compare-and-set on `version`."""

    __tablename__ = "access_policy"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_by: Mapped[str] = mapped_column(String(128))


class ApiTokenRow(Base):
    """A personal API token (broker.api_token_store): the secret is shown once and kept
    only as its hash. The owner's roles and groups as the directory last confirmed them
    are kept beside it, re-read like a session's (`checked_at`)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    username: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_used_from: Mapped[str | None] = mapped_column(String(64), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    display_name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    groups: Mapped[list[str]] = mapped_column(JSON)
    checked_at: Mapped[datetime] = mapped_column(UtcDateTime())


class HelpdeskViewRow(Base):
    """A helpdesk member's read-only view of a clerk's desktop: granted with a reason
    (the token's hash is the websocket's credential, once), open while `alive_at` is
    kept fresh by the broker carrying it, closed at `closed_at`. The clerk's page says
    who is viewing while it is open."""

    __tablename__ = "helpdesk_views"
    __table_args__ = (Index("ix_helpdesk_views_clerk", "clerk", "closed_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    session_hash: Mapped[str] = mapped_column(String(64))
    viewer: Mapped[str] = mapped_column(String(128))
    viewer_name: Mapped[str] = mapped_column(String(200))
    desktop_id: Mapped[str] = mapped_column(String(64))
    pool_id: Mapped[str] = mapped_column(String(64))
    clerk: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    granted_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    opened_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    alive_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class ConsoleDisconnectRow(Base):
    """The helpdesk ended a clerk's console connections to a desktop (which keeps
    running): every broker closes the clerk's consoles to it opened before `at`, and
    the clerk's page says who did it until they connect again (`seen_at`)."""

    __tablename__ = "console_disconnects"
    __table_args__ = (Index("ix_console_disconnects_user", "username", "seen_at"),
                      Index("ix_console_disconnects_desktop", "desktop_id", "at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    desktop_id: Mapped[str] = mapped_column(String(64))
    pool_id: Mapped[str] = mapped_column(String(64))
    username: Mapped[str] = mapped_column(String(128))
    by_user: Mapped[str] = mapped_column(String(128))
    by_name: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
