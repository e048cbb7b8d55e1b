"""Domain types that cross module boundaries: enums and frozen dataclasses only."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime


class Role(enum.StrEnum):
    """From directory groups (broker.roles). The administrator's powers are split three
    ways (三员分立): no one holds two of the administrator roles."""

    STAFF = "staff"
    HELPDESK = "helpdesk"
    SYSTEM_ADMIN = "sysadmin"  # pools, images, hosts, networks, desktops
    SECURITY_ADMIN = "secadmin"  # access policies, role mappings, ending sessions
    AUDIT_ADMIN = "auditadmin"  # reads and exports the audit trail and reports


ADMIN_ROLES = frozenset({Role.SYSTEM_ADMIN, Role.SECURITY_ADMIN, Role.AUDIT_ADMIN})


class Permission(enum.StrEnum):
    """What a request may do. Routes declare one (web.access); broker.access says which
    roles hold it. Entitlement to a pool is a separate check (the pool's groups)."""

    SIGNED_IN = "signed_in"  # any live session: the clerk's own desktops and session
    READ_RECLAIMS = "read_reclaims"  # the idle policy's actions on every clerk's desktop
    MANAGE_IMAGES = "manage_images"  # import golden images
    READ_AUDIT = "read_audit"  # the audit trail and reports (and check its chain)
    HELPDESK = "helpdesk"  # find the clerks of the offices one serves, see their desktops
    MANAGE_SESSIONS = "manage_sessions"  # see who is signed in from where; end a session
    VIEW_SERVICE = "view_service"  # the dashboard: pools, hosts, alerts
    READ_METERING = "read_metering"  # desktop-hours and sessions per office and pool
    API_TOKENS = "api_tokens"  # personal API tokens for the `vdi` command and scripts
    MANAGE_SERVICE = "manage_service"  # change pools, hosts and desktops


class DesktopState(enum.StrEnum):
    """Life cycle of one desktop; every change is a compare-and-set in the database.

    provisioning -> ready -> assigned -> reclaiming -> ready | deleted; plus error and
    maintenance. Whether a user is connected is not a state: it is the tunnels open.
    """

    PROVISIONING = "provisioning"
    READY = "ready"
    ASSIGNED = "assigned"
    RECLAIMING = "reclaiming"
    DELETED = "deleted"
    ERROR = "error"
    MAINTENANCE = "maintenance"


class Power(enum.StrEnum):
    """A desktop's power, apart from its state: the idle policy may shut down or suspend
    a dedicated desktop that stays its clerk's."""

    ON = "on"
    OFF = "off"
    SUSPENDED = "suspended"


class PoolKind(enum.StrEnum):
    FLOATING = "floating"
    DEDICATED = "dedicated"


class ConsoleKind(enum.StrEnum):
    """The remote-display protocol of a desktop's console: what its domain's graphics
    element serves and which protocol core the tunnel speaks."""

    VNC = "vnc"
    SPICE = "spice"


class Firmware(enum.StrEnum):
    """How a golden image's disk boots: an MBR disk through SeaBIOS, or a GPT disk with
    an EFI system partition through OVMF/AAVMF."""

    BIOS = "bios"
    UEFI = "uefi"


class OsFamily(enum.StrEnum):
    """The guest's operating system family: decides the device profile (pools.libvirt.profiles)."""

    LINUX = "linux"
    WINDOWS = "windows"


class Arch(enum.StrEnum):
    """The CPU architecture an image is built for; a host runs some (its capabilities)."""

    X86_64 = "x86_64"
    AARCH64 = "aarch64"


@dataclass(frozen=True)
class ImageTraits:
    """What an imported image declares of itself (detected at import, overridable)."""

    firmware: Firmware
    os_family: OsFamily
    arch: Arch = Arch.X86_64
    virtio: bool = True  # has virtio disk and network drivers (else SATA and e1000)
    agent: bool = True  # runs the QEMU guest agent: "up" is when it answers
    boot_delay_s: int = 0  # without an agent: seconds from start until it counts as up
    secure_boot: bool = False  # its bootloader is signed for UEFI secure boot


@dataclass(frozen=True)
class ConsoleEndpoint:
    """Where a desktop's console listens, as its host reports it (never from a client)."""

    kind: ConsoleKind
    host: str
    port: int


@dataclass(frozen=True)
class Pool:
    id: str
    display_name: str
    kind: PoolKind
    image: str
    vcpus: int
    memory_mib: int
    min_ready: int
    max_size: int
    entitled_groups: tuple[str, ...]
    image_version: int | None = None  # None: the image's released version
    hosts: tuple[str, ...] = ()  # host URIs the pool may use; empty: any
    console: ConsoleKind = ConsoleKind.VNC  # the console its desktops are made with
    # a desktop whose guest is not up this long after its start is failed and replaced
    boot_timeout_s: int = 300
    secure_boot: bool = False  # UEFI secure boot, for images that support it
    # its desktops' network: "none" (no network card), "network:NAME" (a department's
    # network, or a libvirt network the district runs), "bridge:NAME" (a host bridge,
    # e.g. on the district's VLAN), or "user" (QEMU user-mode: the guest reaches the
    # host's own loopback services through 10.0.2.2, so never on a broker's host)
    network: str = "none"
    # customisation data for cloud-init / cloudbase-init (e.g. a domain-join answer)
    user_data: str = ""
    office: str | None = None  # the street office it serves; None: the district's

    @property
    def persistent(self) -> bool:
        """Dedicated desktops keep their user and disk; the broker never reverts them."""
        return self.kind is PoolKind.DEDICATED


@dataclass(frozen=True)
class Desktop:
    id: str
    pool_id: str
    state: DesktopState
    host_uri: str
    domain_name: str
    assigned_user: str | None
    console: ConsoleEndpoint | None  # None until the desktop first runs
    created_at: datetime
    last_input_at: datetime | None
    image_version: int = 0
    error: str | None = None  # the last problem noted for the admin
    power: Power = Power.ON
    guest_addresses: tuple[str, ...] = ()  # as its guest agent last told them


@dataclass(frozen=True)
class Office:
    """A street office: clerks in `clerk_groups` belong to it, helpdesk members in
    `helpdesk_groups` serve it (full group DNs, nested groups resolved)."""

    id: str
    name: str
    clerk_groups: tuple[str, ...] = ()
    helpdesk_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Principal:
    """Who is logged in: what the session knows of the user."""

    username: str
    display_name: str
    roles: frozenset[Role]
    groups: frozenset[str]


def utc_now() -> datetime:
    """The wall clock, aware UTC. Code that decides by time takes a clock argument
    defaulting to this, so tests can drive time."""
    return datetime.now(UTC)
