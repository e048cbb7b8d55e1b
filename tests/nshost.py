"""Extra libvirt hosts on this one machine, for tests of placement, drain and host failure.

Each `NamespaceHost` is a real `libvirtd` (with its own `virtlogd`) running in

* its own network namespace `vdit-h<N>`, attached by a veth pair to the bridge
  `vdit-br0` (10.77.0.1/24) in the root namespace; host N has the address 10.77.0.(10+N).
  The root namespace and every other host reach it directly at L2 (no forwarding);
* its own private mount namespace, in which a tmpfs covers `/run` (sockets, pid files:
  `/run/libvirt`, `/run/libvirtd.pid`, ...) and private folders are bind-mounted over
  `/etc/libvirt` (a copy of the root's configuration, see below), `/var/lib/libvirt`,
  `/var/cache/libvirt` and `/var/log/libvirt`.

So it shares nothing with the root libvirtd (`qemu:///system`) or with another host:
not its sockets, pid files, domain definitions, storage pools or state. Only the folders
of `SharedStorage` (outside every private mount) are seen by all hosts at the same path,
which is what live migration needs (disks, kernels, serial logs).

The copy of `/etc/libvirt` keeps the root's configuration files (`*.conf`, nwfilters) but
none of its objects (no domains, networks, storage pools or secrets), and sets:

* `libvirtd.conf`: `listen_tcp = 1`, `listen_tls = 0`, `auth_tcp = "none"` (test hosts
  only), `listen_addr = "<address>"`, a fixed `host_uuid` per host (libvirt refuses to
  migrate to a host with its own UUID) and a log file in its private log folder;
* `qemu.conf`: `migration_address` and `migration_host` = its address (the incoming
  migration listens there and the source is told to connect there: the shared hostname
  of the machine would not do).

Reach a host from the root namespace as `qemu+tcp://<address>/system` (`host.uri`).
qemu runs under libvirt as the Debian default user (`libvirt-qemu`, DAC with dynamic
ownership); the shared folders are traversable (0711) so it can open what libvirt
labels for it.

The names (netns, bridge, addresses, folders) are fixed, so only one test session at a
time may use them: hold `exclusive()` (an flock on /var/lib/vdit-nshost/lock, released
when the process dies) around everything, including `cleanup_leftovers()`, which
removes what a crashed run left (`leftovers()` lists it). A second session waits for
the first instead of destroying its hosts. Not thread-safe. Run as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from pools.libvirt.host import LibvirtHost

BASE_DIR = Path("/var/lib/vdit-nshost")
HOSTS_DIR = BASE_DIR / "hosts"
LOCK_FILE = BASE_DIR / "lock"
SHARED_DIR = BASE_DIR / "shared"
BRIDGE = "vdit-br0"
BRIDGE_ADDRESS = "10.77.0.1"
PREFIX_LEN = 24
NETNS_PREFIX = "vdit-h"
LIBVIRTD_PORT = 16509
MARKER_ENV = "VDIT_NSHOST"  # set on every process we start in a namespace
ROOT_LIBVIRT_ETC = Path("/etc/libvirt")
ROOT_LIBVIRT_CACHE = Path("/var/cache/libvirt/qemu/capabilities")
# every (re)definition of these keys is dropped from the copies before ours are appended
LIBVIRTD_KEYS = ("listen_tcp", "listen_tls", "auth_tcp", "listen_addr", "host_uuid",
                 "host_uuid_source", "log_outputs", "log_filters", "tcp_port")
QEMU_KEYS = ("migration_address", "migration_host")


class NamespaceHostError(RuntimeError):
    """A namespace host could not be set up, started or stopped; the message says why."""


def _run(cmd: Sequence[str], *, check: bool = True, timeout_s: float = 30,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s,
                                check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NamespaceHostError(f"{' '.join(cmd)}: {e}") from e
    if check and result.returncode != 0:
        raise NamespaceHostError(f"{' '.join(cmd)} exited {result.returncode}: "
                                 f"{(result.stderr or result.stdout).strip()}")
    return result


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --- processes -----------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _has_marker(pid: int, value: str | None = None) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    if value is None:
        return any(e.startswith(f"{MARKER_ENV}=".encode()) for e in env)
    return f"{MARKER_ENV}={value}".encode() in env


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def _netns_names() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(NETNS_PREFIX)]


def _netns_pids(name: str) -> list[int]:
    out = _run(["ip", "netns", "pids", name], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _stray_pids(netns: str | None = None) -> list[int]:
    """Live processes of our namespace hosts: those in the netns `netns` (or any `vdit-h*`
    netns), those carrying our marker, and qemu guests named `vdit-*` that run outside the
    root network namespace (a host whose netns file is already gone)."""
    names = [netns] if netns else _netns_names()
    pids: set[int] = set()
    for name in names:
        pids.update(_netns_pids(name))
    root_ns = _netns_inode("self")
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        if _has_marker(pid, netns):
            pids.add(pid)
        elif netns is None:
            ns = _netns_inode(pid)
            if ns is not None and ns != root_ns and "guest=vdit-" in _cmdline(pid):
                pids.add(pid)
    return sorted(p for p in pids if _alive(p))


def _kill_all(pids: Iterable[int], bound_s: float = 10) -> list[int]:
    """SIGKILL each pid; wait until none lives. Returns the pids still alive."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + bound_s
    while True:
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _mounts_mentioning(text: str) -> list[str]:
    """Mounts, in any process's mount namespace, whose source or target mentions `text`:
    "<source> on <target> (seen by N processes, e.g. pid P)"."""
    seen: dict[tuple[str, str], list[int]] = {}
    for pid in _all_pids():
        try:
            lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 4 and (text in fields[3] or text in fields[4]):
                seen.setdefault((fields[3], fields[4]), []).append(pid)
    return [f"{src} on {target} (seen by {len(pids)} processes, e.g. pid {pids[0]})"
            for (src, target), pids in sorted(seen.items())]


# --- the bridge, shared storage, leftovers -----------------------------------------------


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def ensure_bridge() -> None:
    """The bridge `vdit-br0` with 10.77.0.1/24, up (created when missing)."""
    if not _link_exists(BRIDGE):
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addrs = _run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f" {BRIDGE_ADDRESS}/" not in addrs:
        _run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])


def remove_bridge() -> None:
    if _link_exists(BRIDGE):
        _run(["ip", "link", "del", BRIDGE])


@dataclass(frozen=True)
class SharedStorage:
    """Folders every namespace host sees at the same path (they lie outside every
    private mount): `images` for disks, kernels and initrds, `logs` for serial logs.
    Root-owned, mode 0711: qemu (libvirt-qemu) can traverse them and open what libvirt
    labels for it, but not list them."""

    root: Path = SHARED_DIR

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def create(self) -> SharedStorage:
        for d in (BASE_DIR, self.root, self.images, self.logs):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o711)
        return self

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def leftovers() -> list[str]:
    """What namespace hosts left on this machine (empty: nothing): `vdit-h*` netns, our
    links, live processes, mounts of our folders or netns files in any mount namespace."""
    found = [f"netns {n}" for n in _netns_names()]
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    for m in re.finditer(r"^\d+: ([^:@]+)", links, re.MULTILINE):
        if m.group(1) == BRIDGE or m.group(1).startswith(NETNS_PREFIX):
            found.append(f"link {m.group(1)}")
    found += [f"process {p}: {_cmdline(p)}" for p in _stray_pids()]
    found += [f"mount {line}" for line in _mounts_mentioning(str(HOSTS_DIR) + "/")]
    found += [f"mount {line}" for line in _mounts_mentioning(f"/run/netns/{NETNS_PREFIX}")]
    return found


def cleanup_leftovers(*, bridge: bool = True, shared: bool = True) -> list[str]:
    """Remove what a previous (crashed) run left: processes, `vdit-h*` netns and veths,
    the per-host folders and, unless told not to, the bridge and the shared folder.
    Returns what it found before removing it."""
    found = leftovers()
    _kill_all(_stray_pids())
    for name in _netns_names():
        _run(["ip", "netns", "del", name], check=False)
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    for m in re.finditer(r"^\d+: ([^:@]+)", links, re.MULTILINE):
        if m.group(1).startswith(NETNS_PREFIX):
            _run(["ip", "link", "del", m.group(1)], check=False)
    if bridge:
        remove_bridge()
    shutil.rmtree(HOSTS_DIR, ignore_errors=True)
    if shared:
        SharedStorage().remove()
    return found


@contextlib.contextmanager
def exclusive(timeout_s: float = 600) -> Iterator[None]:
    """Hold the machine-wide namespace-host lock (waits up to timeout_s for another
    session to finish; NamespaceHostError after that)."""
    BASE_DIR.mkdir(parents=True, exist_ok=True)
    BASE_DIR.chmod(0o711)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NamespaceHostError(
                        f"another session holds {LOCK_FILE} (namespace hosts in use) "
                        f"for more than {timeout_s:.0f} s") from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


# --- libvirt client side ---------------------------------------------------------------

def ensure_libvirt_event_loop() -> None:
    """libvirt's default event loop in a daemon thread, once per process: the broker's
    own (the test's connections and the broker's adapters share it)."""
    from pools.libvirt.connection import ensure_event_loop

    ensure_event_loop()


# --- one host ------------------------------------------------------------------------

_ANCHOR_SCRIPT = """set -e
mount -t tmpfs -o mode=0755 vdit-run /run
mkdir -p /run/libvirt /run/lock
mount --bind "$1/etc" /etc/libvirt
mount --bind "$1/lib" /var/lib/libvirt
mount --bind "$1/cache" /var/cache/libvirt
mount --bind "$1/log" /var/log/libvirt
shift
for emulator in "$@"; do mount --bind /dev/null "$emulator"; done
echo ready
exec sleep infinity
"""


class NamespaceHost:
    """One extra libvirt host: `libvirtd` in netns `vdit-h<index>` at 10.77.0.(10+index).

    Use as a context manager (`with NamespaceHost(1) as h:`) or call `start()`/`stop()`.
    `stop()` is idempotent and also cleans up after a failed `start()`.
    """

    def __init__(self, index: int, *, libvirtd_conf_extra: str = "",
                 qemu_conf_extra: str = "", hidden_emulators: Sequence[str] = ()) -> None:
        """`hidden_emulators`: QEMU binaries (e.g. /usr/bin/qemu-system-aarch64) covered
        in the host's mount namespace, so its libvirtd does not offer their guests: a
        host of one architecture beside the machine's own, which runs more."""
        if not 1 <= index <= 200:
            raise ValueError("index must be 1..200")
        self.index = index
        self.name = f"{NETNS_PREFIX}{index}"
        self.address = f"10.77.0.{10 + index}"
        self.uri = f"qemu+tcp://{self.address}/system"
        self.dir = HOSTS_DIR / self.name
        self.veth = f"{self.name}r"  # root-namespace end; the namespace end is eth0
        self.host_uuid = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.name}.vdit.test"))
        self._libvirtd_conf_extra = libvirtd_conf_extra
        self._qemu_conf_extra = qemu_conf_extra
        self._hidden = tuple(hidden_emulators)
        self._anchor: subprocess.Popen[bytes] | None = None
        self._virtlogd: subprocess.Popen[bytes] | None = None
        self._libvirtd: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"NamespaceHost({self.name}, {self.uri})"

    # -- paths ----------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        """Its /var/log/libvirt as seen from the root namespace (libvirtd.log, qemu/*.log)."""
        return self.dir / "log"

    def qemu_log(self, domain: str) -> str:
        """The tail of libvirt's log of `domain`'s qemu on this host."""
        return _tail(self.log_dir / "qemu" / f"{domain}.log")

    def libvirtd_log(self) -> str:
        return _tail(self.log_dir / "libvirtd.log") + _tail(self.dir / "libvirtd.out")

    @property
    def libvirtd_pid(self) -> int | None:
        p = self._libvirtd
        return p.pid if p is not None and p.poll() is None else None

    def pids(self) -> list[int]:
        """Live processes of this host (anchor, virtlogd, libvirtd, qemu guests)."""
        return _stray_pids(self.name)

    # -- start ----------------------------------------------------------------------

    def start(self, timeout_s: float = 30) -> NamespaceHost:
        """Create the namespace, its network and folders; start virtlogd and libvirtd;
        return once `uri` answers. On failure everything is removed again and
        NamespaceHostError says why (with the daemon's log)."""
        self.stop()
        try:
            ensure_bridge()
            self._make_network()
            self._make_dirs()
            self._start_anchor(timeout_s)
            self._start_virtlogd(timeout_s)
            self._start_libvirtd(timeout_s)
        except BaseException as e:
            detail = self.libvirtd_log()
            with contextlib.suppress(NamespaceHostError):
                self.stop()
            if isinstance(e, NamespaceHostError):
                raise NamespaceHostError(f"{self.name}: {e}\n--- libvirtd log ---\n{detail}"
                                         ) from e
            raise
        return self

    def _make_network(self) -> None:
        _run(["ip", "netns", "add", self.name])
        _run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
              "netns", self.name])
        _run(["ip", "link", "set", self.veth, "master", BRIDGE, "up"])
        ns = ["ip", "-n", self.name]
        _run([*ns, "addr", "add", f"{self.address}/{PREFIX_LEN}", "dev", "eth0"])
        _run([*ns, "link", "set", "lo", "up"])
        _run([*ns, "link", "set", "eth0", "up"])

    def _make_dirs(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        BASE_DIR.chmod(0o711)
        HOSTS_DIR.chmod(0o711)
        etc, lib, cache, log = (self.dir / d for d in ("etc", "lib", "cache", "log"))
        etc.mkdir(mode=0o755)
        # configuration files only: none of the root daemon's domains, networks,
        # storage pools or secrets (they would autostart here)
        for f in ROOT_LIBVIRT_ETC.iterdir():
            if f.is_file():
                shutil.copy2(f, etc / f.name)
        if (ROOT_LIBVIRT_ETC / "nwfilter").is_dir():
            shutil.copytree(ROOT_LIBVIRT_ETC / "nwfilter", etc / "nwfilter")
        for d in ("qemu", "qemu/networks", "qemu/networks/autostart", "storage",
                  "storage/autostart", "secrets", "hooks"):
            (etc / d).mkdir(mode=0o700, exist_ok=True)
        _set_conf(etc / "libvirtd.conf", LIBVIRTD_KEYS, {
            "listen_tcp": "1",
            "listen_tls": "0",
            "auth_tcp": '"none"',
            "listen_addr": f'"{self.address}"',
            "tcp_port": f'"{LIBVIRTD_PORT}"',
            "host_uuid": f'"{self.host_uuid}"',
            "log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"',
        }, self._libvirtd_conf_extra)
        _set_conf(etc / "qemu.conf", QEMU_KEYS, {
            "migration_address": f'"{self.address}"',
            "migration_host": f'"{self.address}"',
        }, self._qemu_conf_extra)
        lib.mkdir(mode=0o755)
        cache.mkdir(mode=0o755)
        # the root's probe results of the same qemu binaries: spares a probe per start
        if ROOT_LIBVIRT_CACHE.is_dir():
            shutil.copytree(ROOT_LIBVIRT_CACHE, cache / "qemu" / "capabilities")
        log.mkdir(mode=0o700)
        (log / "qemu").mkdir(mode=0o700)

    def _env(self) -> dict[str, str]:
        return {**os.environ, MARKER_ENV: self.name}

    def _start_anchor(self, timeout_s: float) -> None:
        """A `sleep` that holds the private mount namespace (entered by nsenter later)."""
        out = self.dir / "anchor.out"
        with out.open("wb") as f:
            self._anchor = subprocess.Popen(
                ["ip", "netns", "exec", self.name, "unshare", "--mount",
                 "--propagation", "private", "sh", "-c", _ANCHOR_SCRIPT, "anchor",
                 str(self.dir), *self._hidden],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=self._env())
        deadline = time.monotonic() + timeout_s
        while b"ready" not in out.read_bytes():
            if self._anchor.poll() is not None or time.monotonic() > deadline:
                raise NamespaceHostError(f"mount namespace setup failed: {_tail(out)}")
            time.sleep(0.02)

    def _in_namespace(self, argv: list[str], out_name: str) -> subprocess.Popen[bytes]:
        assert self._anchor is not None
        with (self.dir / out_name).open("ab") as f:
            return subprocess.Popen(
                ["nsenter", "-t", str(self._anchor.pid), "-m", "-n", *argv],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                env=self._env(), start_new_session=True)

    def _ns_path(self, path: str) -> Path:
        """`path` inside the host's mount namespace, seen from the root namespace."""
        assert self._anchor is not None
        return Path(f"/proc/{self._anchor.pid}/root{path}")

    def _start_virtlogd(self, timeout_s: float) -> None:
        self._virtlogd = self._in_namespace(["virtlogd"], "virtlogd.out")
        deadline = time.monotonic() + timeout_s
        while not self._ns_path("/run/libvirt/virtlogd-sock").exists():
            if self._virtlogd.poll() is not None or time.monotonic() > deadline:
                raise NamespaceHostError(f"virtlogd did not start: "
                                         f"{_tail(self.dir / 'virtlogd.out')}")
            time.sleep(0.02)

    def _start_libvirtd(self, timeout_s: float) -> None:
        self._libvirtd = self._in_namespace(["libvirtd", "--listen"], "libvirtd.out")
        deadline = time.monotonic() + timeout_s
        while True:
            if self._libvirtd.poll() is not None:
                raise NamespaceHostError(f"libvirtd exited {self._libvirtd.returncode}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise NamespaceHostError(f"libvirtd does not answer at {self.uri} "
                                         f"after {timeout_s:.0f} s")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.address, LIBVIRTD_PORT), timeout=1):
                pass
        except OSError:
            return False
        return _run(["virsh", "-c", self.uri, "-q", "hostname"], check=False,
                    timeout_s=10).returncode == 0

    # -- failures -------------------------------------------------------------------

    def kill_libvirtd(self) -> None:
        """SIGKILL this host's libvirtd (its guests keep running, as after a daemon
        crash); the host stops answering at once."""
        if self._libvirtd is not None and self._libvirtd.poll() is None:
            self._libvirtd.kill()
            self._libvirtd.wait(10)

    def restart_libvirtd(self, timeout_s: float = 30) -> None:
        """Stop libvirtd (SIGTERM, then SIGKILL) if it runs, start it again, wait until it
        answers. It re-attaches to the guests that kept running."""
        if self._libvirtd is not None and self._libvirtd.poll() is None:
            self._libvirtd.terminate()
            try:
                self._libvirtd.wait(10)
            except subprocess.TimeoutExpired:
                self.kill_libvirtd()
        try:
            self._start_libvirtd(timeout_s)
        except NamespaceHostError as e:
            raise NamespaceHostError(f"{self.name}: {e}\n{self.libvirtd_log()}") from e

    def cut_network(self) -> None:
        """Take the host's link down (the root-namespace veth end): packets to and from
        it vanish, established TCP connections hang as with a pulled cable."""
        _run(["ip", "link", "set", self.veth, "down"])

    def restore_network(self) -> None:
        _run(["ip", "link", "set", self.veth, "up"])

    # -- stop -----------------------------------------------------------------------

    def destroy_domains(self, timeout_s: float = 15) -> None:
        """Destroy (and undefine) every domain of this host through its libvirtd, when it
        answers; best effort (stop() kills what is left anyway)."""
        if self.libvirtd_pid is None:
            return
        try:
            with socket.create_connection((self.address, LIBVIRTD_PORT), timeout=1):
                pass
        except OSError:
            return
        virsh = ["virsh", "-q", "-c", self.uri]
        try:
            names = _run([*virsh, "list", "--all", "--name"], timeout_s=timeout_s).stdout
            for name in names.split():
                _run([*virsh, "destroy", name], check=False, timeout_s=timeout_s)
                _run([*virsh, "undefine", name], check=False, timeout_s=timeout_s)
        except NamespaceHostError:
            return

    def stop(self) -> None:
        """Destroy its domains, kill every process of the namespace (qemu included),
        which ends the private mount namespace and its mounts; remove the netns, the
        veth pair and the host's folders. Idempotent; raises NamespaceHostError naming
        what could not be removed."""
        self.destroy_domains()
        left = _kill_all(self.pids())
        for p in (self._libvirtd, self._virtlogd, self._anchor):
            if p is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        self._anchor = self._virtlogd = self._libvirtd = None
        if self.name in _netns_names():
            _run(["ip", "netns", "del", self.name], check=False)
        if _link_exists(self.veth):
            _run(["ip", "link", "del", self.veth], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        problems = [f"process {p} still alive: {_cmdline(p)}" for p in left]
        if self.name in _netns_names():
            problems.append(f"netns {self.name} still there")
        if _link_exists(self.veth):
            problems.append(f"link {self.veth} still there")
        problems += _mounts_mentioning(str(self.dir) + "/")
        if problems:
            raise NamespaceHostError(f"{self.name} left behind: " + "; ".join(problems))

    def __enter__(self) -> NamespaceHost:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _set_conf(path: Path, keys: Sequence[str], values: dict[str, str], extra: str) -> None:
    """Rewrite a libvirt config file: drop any setting of `keys`, append `values`."""
    pattern = re.compile(rf"^\s*({'|'.join(map(re.escape, keys))})\s*=")
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if not pattern.match(line)]
    kept.append("# --- vdit namespace host ---")
    kept += [f"{k} = {v}" for k, v in values.items()]
    if extra:
        kept.append(extra)
    path.write_text("\n".join(kept) + "\n")


@contextlib.contextmanager
def lone_host(storage_pool: str, *, lock_wait_s: float = 300,
              hidden_emulators: Sequence[str] = ()) -> Iterator[tuple[NamespaceHost, LibvirtHost]]:
    """One namespace host (index 1) and the broker's adapter to it (a `LibvirtHost` with
    storage pool `storage_pool` in the shared folder, TCG): the namespace lock held, a
    clean slate before and after. Fails the test with the reason when the host cannot
    start or leaves anything behind."""
    with exclusive(timeout_s=lock_wait_s):
        cleanup_leftovers()
        shared = SharedStorage().create()
        h = NamespaceHost(1, hidden_emulators=hidden_emulators)
        try:
            h.start()
        except NamespaceHostError as e:
            cleanup_leftovers()
            pytest.fail(f"the namespace host could not start: {e}")
        adapter = LibvirtHost(h.uri, storage_pool=storage_pool, storage_dir=shared.images,
                              domain_type="qemu", graphics_listen=h.address,
                              log_dir=shared.logs)
        try:
            yield h, adapter
        finally:
            adapter.close()
            h.stop()
            cleanup_leftovers()
            left = leftovers()
            if left:
                pytest.fail("the namespace host left things behind:\n" + "\n".join(left))
