"""One explicit settings object, loaded once from a TOML file and `VDI_*` variables.

Precedence: built-in defaults < TOML file (`VDI_CONFIG` or `--config`) < `VDI_<FIELD>`
environment variables. Lists in the environment are separated by ';'.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class RoleMap:
    """Full group DNs that grant each role (deny by default)."""

    system_admin: tuple[str, ...] = ()
    security_admin: tuple[str, ...] = ()
    audit_admin: tuple[str, ...] = ()
    helpdesk: tuple[str, ...] = ()
    staff: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    # where the broker keeps its own state (database file, logs)
    state_dir: Path = Path("var")
    # the only folder image files are imported from through the API (an admin copies the
    # district's image there); empty: `<state_dir>/imports`
    image_import_dir: str = ""
    database_url: str = ""
    public_url: str = "http://127.0.0.1:8000"
    # extra websocket Origins accepted besides public_url's
    allowed_origins: tuple[str, ...] = ()
    listen_host: str = "127.0.0.1"
    listen_port: int = 8000

    # directory
    ldap_url: str = "ldap://127.0.0.1:3890"
    ldap_base_dn: str = "dc=example,dc=org"
    ldap_bind_dn: str = ""
    ldap_bind_password: str = ""
    ldap_user_base: str = ""
    ldap_group_base: str = ""
    ldap_user_attr: str = "uid"
    ldap_timeout_s: float = 3.0
    ldap_ca_file: str = ""
    # the three administrators (三员): system, security, audit; a person in groups of two
    # of them gets neither. `role_admin_groups` (before the split) counts as system.
    role_system_admin_groups: tuple[str, ...] = ()
    role_security_admin_groups: tuple[str, ...] = ()
    role_audit_admin_groups: tuple[str, ...] = ()
    role_admin_groups: tuple[str, ...] = ()
    role_helpdesk_groups: tuple[str, ...] = ()
    role_staff_groups: tuple[str, ...] = ()

    # hypervisor
    libvirt_uri: str = "qemu:///system"
    domain_type: str = "auto"  # auto | kvm | qemu
    storage_pool: str = "vdi"
    storage_dir: Path = Path("/var/lib/libvirt/images/vdi")
    domain_prefix: str = "vdi-"
    libvirt_timeout_s: float = 20.0
    graphics_listen: str = "127.0.0.1"

    # sessions and console
    session_idle_s: int = 8 * 3600
    session_absolute_s: int = 12 * 3600
    # how long a session's roles and groups are trusted before the directory is asked
    # again (also asked at every console grant); a user gone from it loses the session
    session_recheck_s: int = 300
    # a console grant asks the directory unless it confirmed the user this recently (the
    # sign-in a moment before is a confirmation: sign-in and first connect ask it once)
    console_grant_confirm_s: int = 10
    console_token_ttl_s: int = 60
    max_tunnels_per_user: int = 4
    max_ws_frame_bytes: int = 1 << 20
    vnc_password_valid_s: int = 30
    # personal API tokens (docs/api-tokens.md): the longest expiry one may choose
    api_token_max_days: int = 90

    # several hosts: placement and failure
    memory_overcommit: float = 1.0  # guest memory per MiB of host memory
    cpu_overcommit: float = 8.0  # vCPUs per host CPU (light task workers: 6-10 is usual)
    max_provisioning_per_host: int = 2  # desktops being made on one host at once
    host_check_interval_s: float = 5.0
    host_down_after_s: float = 30.0  # no answer for this long: the host is down
    reconcile_interval_s: float = 60.0
    job_lease_s: float = 30.0

    # worker
    worker_interval_s: float = 2.0
    # how often each broker writes console input times and "console still open" (its
    # open consoles' heartbeat), and closes consoles the idle policy took back
    input_flush_s: float = 10.0

    # idle reclaim (the policies themselves are per pool: `vdi pool-policy`)
    reclaim_interval_s: float = 5.0
    console_stale_s: float = 60.0  # a console no broker reported for this long is closed
    shutdown_grace_s: float = 60.0  # a guest that ignores the power button is forced off

    # reports: the district's days (metering adds up desktop-hours per calendar day)
    report_timezone: str = "Asia/Shanghai"

    @property
    def role_map(self) -> RoleMap:
        return RoleMap(
            system_admin=self.role_system_admin_groups + self.role_admin_groups,
            security_admin=self.role_security_admin_groups,
            audit_admin=self.role_audit_admin_groups,
            helpdesk=self.role_helpdesk_groups,
            staff=self.role_staff_groups,
        )

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'vdi.sqlite3').resolve()}"

    @property
    def import_dir(self) -> Path:
        """The folder image files are imported from through the API."""
        return Path(self.image_import_dir) if self.image_import_dir else self.state_dir / "imports"

    @property
    def origins(self) -> frozenset[str]:
        return frozenset((self.public_url.rstrip("/"), *self.allowed_origins))

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def user_base(self) -> str:
        return self.ldap_user_base or self.ldap_base_dn

    @property
    def group_base(self) -> str:
        return self.ldap_group_base or self.ldap_base_dn


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    default = _FIELDS[name].default
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        # TOML gives typed values: a wrong type is an error, not something to convert
        # (int(80.9) would silently give 80, str(["a"]) a string that is no list)
        if isinstance(value, bool):
            raise TypeError("true/false is not a value for this setting")
        if isinstance(value, dict):
            raise TypeError("a table is not a value for this setting")
        if isinstance(default, tuple):
            if isinstance(value, str):
                # group DNs hold commas, so lists in the environment use ';'
                return tuple(v.strip() for v in value.split(";") if v.strip())
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise TypeError("a list of strings is needed")
            return tuple(value)
        if isinstance(value, list | tuple):
            raise TypeError("a list is not a value for this setting")
        if isinstance(default, int):
            if isinstance(value, float):
                raise TypeError("a whole number is needed")
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, Path):
            return Path(value)
        return str(value)
    except (TypeError, ValueError) as e:
        shown = "***" if "password" in name else repr(value)
        raise SettingsError(f"setting {name!r}: cannot use {shown}: {e}") from e


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Build the settings; raises SettingsError naming the bad file or key."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = path or env.get("VDI_CONFIG")
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise SettingsError(f"config file {p} does not exist") from e
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"config file {p} is not valid TOML: {e}") from e
        for key, value in _flatten(data).items():
            if key not in _FIELDS:
                raise SettingsError(f"config file {p}: unknown setting {key!r}")
            values[key] = _coerce(key, value)
    for name in _FIELDS:
        raw = env.get("VDI_" + name.upper())
        if raw is not None:
            values[name] = _coerce(name, raw)
    for key, value in overrides.items():
        if key not in _FIELDS:
            raise SettingsError(f"unknown setting {key!r}")
        values[key] = _coerce(key, value)
    settings = Settings(**values)
    if not 1 <= settings.api_token_max_days <= 366:
        raise SettingsError("setting 'api_token_max_days' must be 1 to 366")
    if settings.domain_type not in ("auto", "kvm", "qemu"):
        raise SettingsError("setting 'domain_type' must be auto, kvm or qemu")
    try:
        ZoneInfo(settings.report_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"setting 'report_timezone' is not a known time zone: "
                            f"{settings.report_timezone!r} (e.g. Asia/Shanghai)") from None
    if settings.console_stale_s < 3 * settings.input_flush_s:
        raise SettingsError("setting 'console_stale_s' must be at least three times "
                            "'input_flush_s' (the open consoles' heartbeat), or open "
                            "consoles would look closed")
    return settings


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """[ldap] url = ... becomes ldap_url; top-level keys stay as they are."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "_"))
        else:
            out[name] = value
    return out


def with_changes(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)


__all__ = ["RoleMap", "Settings", "SettingsError", "load_settings", "with_changes"]
