"""Which architecture a UEFI disk boots on, read off its EFI system partition: the
bootloaders under `/EFI/*/` carry it in their names (`BOOTX64.EFI`, `grubaa64.efi`,
`shimaa64.efi`: the UEFI specification's removable-media names and the distributions'
own). Pure: the caller hands the first bytes of the partition; a FAT directory outside
them, a damaged file system or no such names give no answer, never an error.

The partition's bytes come from a file the district brought: every offset is checked
against what was read, directory chains are bounded, and nothing is trusted to end.
"""

from __future__ import annotations

from vdi.domain import Arch

_DIR_ENTRY = 32
_MAX_CLUSTERS_PER_DIR = 64  # a directory longer than this is not read further
_MAX_DIRS = 16  # /EFI and its sub-folders at most
_ATTR_LFN, _ATTR_VOLUME, _ATTR_DIR = 0x0F, 0x08, 0x10
_SUFFIXES = (("AA64", Arch.AARCH64), ("X64", Arch.X86_64))


class _OutOfRange(Exception):
    """An offset beyond the bytes read, or a value no FAT file system has."""


def _u(data: bytes, offset: int, size: int) -> int:
    if offset < 0 or offset + size > len(data):
        raise _OutOfRange
    return int.from_bytes(data[offset:offset + size], "little")


class _Fat:
    def __init__(self, data: bytes) -> None:
        self.data = data
        if _u(data, 510, 2) != 0xAA55:
            raise _OutOfRange
        self.bps = _u(data, 11, 2)
        self.spc = _u(data, 13, 1)
        reserved, fats, root_entries = _u(data, 14, 2), _u(data, 16, 1), _u(data, 17, 2)
        fat_size = _u(data, 22, 2) or _u(data, 36, 4)
        total = _u(data, 19, 2) or _u(data, 32, 4)
        if self.bps not in (512, 1024, 2048, 4096) or self.spc not in (1, 2, 4, 8, 16, 32,
                                                                     64, 128):
            raise _OutOfRange
        if not reserved or not fats or not fat_size:
            raise _OutOfRange
        root_sectors = (root_entries * _DIR_ENTRY + self.bps - 1) // self.bps
        self.fat_at = reserved * self.bps
        self.root_at = (reserved + fats * fat_size) * self.bps
        self.root_bytes = root_entries * _DIR_ENTRY
        self.data_sector = reserved + fats * fat_size + root_sectors
        clusters = (total - self.data_sector) // self.spc if total > self.data_sector else 0
        self.bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.root_cluster = _u(data, 44, 4) if self.bits == 32 else 0

    def _next(self, cluster: int) -> int | None:
        if self.bits == 12:
            pair = _u(self.data, self.fat_at + cluster + cluster // 2, 2)
            value, end = (pair >> 4 if cluster & 1 else pair & 0xFFF), 0xFF8
        elif self.bits == 16:
            value, end = _u(self.data, self.fat_at + 2 * cluster, 2), 0xFFF8
        else:
            value, end = _u(self.data, self.fat_at + 4 * cluster, 4) & 0x0FFFFFFF, 0x0FFFFFF8
        return None if value >= end or value < 2 else value

    def _chain(self, cluster: int) -> bytes:
        out = bytearray()
        size = self.spc * self.bps
        current: int | None = cluster
        for _ in range(_MAX_CLUSTERS_PER_DIR):
            if current is None:
                break
            at = (self.data_sector + (current - 2) * self.spc) * self.bps
            if current < 2 or at + size > len(self.data):
                raise _OutOfRange
            out += self.data[at:at + size]
            current = self._next(current)
        return bytes(out)

    def root(self) -> bytes:
        if self.bits == 32:
            return self._chain(self.root_cluster)
        if self.root_at + self.root_bytes > len(self.data):
            raise _OutOfRange
        return self.data[self.root_at:self.root_at + self.root_bytes]

    def entries(self, directory: bytes) -> list[tuple[str, bool, int]]:
        """(NAME.EXT, is a folder, first cluster) of each entry of a directory."""
        found = []
        for at in range(0, len(directory) - _DIR_ENTRY + 1, _DIR_ENTRY):
            entry = directory[at:at + _DIR_ENTRY]
            if entry[0] == 0:
                break
            attr = entry[11]
            if entry[0] == 0xE5 or attr == _ATTR_LFN or attr & _ATTR_VOLUME:
                continue
            base = entry[:8].decode("ascii", "replace").rstrip()
            ext = entry[8:11].decode("ascii", "replace").rstrip()
            cluster = _u(entry, 26, 2) | _u(entry, 20, 2) << 16
            found.append((f"{base}.{ext}" if ext else base, bool(attr & _ATTR_DIR), cluster))
        return found

    def folder(self, entries: list[tuple[str, bool, int]], name: str) -> bytes | None:
        for entry_name, is_dir, cluster in entries:
            if is_dir and entry_name.upper() == name and cluster >= 2:
                return self._chain(cluster)
        return None


def bootloader_arches(partition: bytes) -> frozenset[Arch]:
    """The architectures of the bootloaders in the `/EFI/*/` folders of a FAT file
    system whose first bytes are `partition`; empty when there are none or they cannot
    be read from these bytes."""
    try:
        fat = _Fat(partition)
        efi = fat.folder(fat.entries(fat.root()), "EFI")
        if efi is None:
            return frozenset()
        arches: set[Arch] = set()
        folders = [(n, c) for n, is_dir, c in fat.entries(efi)
                   if is_dir and n not in (".", "..")][:_MAX_DIRS]
        for name, _ in folders:
            files = fat.folder(fat.entries(efi), name)
            for file_name, is_dir, _ in fat.entries(files or b""):
                stem, _, ext = file_name.upper().partition(".")
                if is_dir or ext != "EFI":
                    continue
                arches.update(arch for suffix, arch in _SUFFIXES if stem.endswith(suffix))
        return frozenset(arches)
    except _OutOfRange:
        return frozenset()
