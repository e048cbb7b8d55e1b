"""The provisioning section's pure parts on synthetic measurements: no libvirt, no guest."""

from __future__ import annotations

import inspect
from pathlib import Path

from bench import provision
from bench.__main__ import DEFAULT_ORDER, FULL_TIMEOUT_S, summary_lines
from bench.provision import (
    FULL,
    LARGE,
    LINKED,
    MAIN,
    PAIR_ORDERS,
    PER_HOST_PARALLEL,
    Case,
    DesktopRun,
    Half,
    LoadStats,
    ModeRun,
    build_section,
    comparison,
    timeline,
)
from bench.report import Results, SectionEntry, render
from pools.hypervisor import ImageFiles
from pools.jobs.runner import JobRunner
from pools.worker import PoolWorker
from vdi.domain import Firmware, ImageTraits, OsFamily

TRAITS = ImageTraits(Firmware.BIOS, OsFamily.LINUX)
IMAGE = ImageFiles(disk_path="/var/lib/libvirt/images/vdi-bench/img-disk.qcow2",
                   disk_bytes=64 * 2**20, traits=TRAITS)
LARGE_IMAGE = ImageFiles(disk_path="/var/lib/libvirt/images/vdi-bench/big-disk.qcow2",
                         disk_bytes=576 * 2**20, traits=TRAITS)


def half(mode: str, pair: int, position: int, *, count: int = 2, create_s: float = 0.5,
         boot_s: float = 10.0, ready: int | None = None, allocated: int = 320 * 1024,
         offset_s: float = 0.0, bound_s: float = 95.0) -> Half:
    """`count` desktops created PER_HOST_PARALLEL at a time, each call taking `create_s`,
    each guest VDI-READY `boot_s` after its call returned; only the first `ready` got
    there."""
    ready = count if ready is None else ready
    desktops = []
    for i in range(count):
        started = (i // PER_HOST_PARALLEL) * create_s
        created = started + create_s + 0.01 * i
        desktops.append(DesktopRun(
            name=f"vdib-prov-main-{mode}{pair}-{i + 1:02d}", started_s=started,
            created_s=created, allocated_bytes=allocated,
            ready_s=created + boot_s + 0.1 * i if i < ready else None, disk_ok=i < ready))
    return Half(mode=mode, pair=pair, position=position, requested=count, desktops=desktops,
                offset_s=offset_s, all_running_s=max(d.created_s for d in desktops),
                ready_bound_s=bound_s - offset_s,
                load=LoadStats(load_1m_before=0.3 if position == 1 else 4.0, load_1m_max=7.5,
                               cpu_busy=0.97, other_guests=1),
                qemu_rss_mib=200.0 * count, teardown_s=2.0)


def mode_run(mode: str, *, count: int = 4, create_s: float = 0.5, second_create_s: float | None
             = None, ready: int | None = None, allocated: int = 320 * 1024) -> ModeRun:
    """A mode's two halves of count/2 in the order of PAIR_ORDERS; `ready` of each half
    got to VDI-READY."""
    halves = []
    for pair, order in enumerate(PAIR_ORDERS, 1):
        position = order.index(mode) + 1
        slow = second_create_s if position == 2 and second_create_s is not None else create_s
        halves.append(half(mode, pair, position, count=count // 2, create_s=slow,
                           ready=ready, allocated=allocated,
                           offset_s=0.0 if position == 1 else 5.0))
    return ModeRun(mode, halves)


def case(linked: ModeRun, full: ModeRun, key: str = MAIN) -> Case:
    if key == MAIN:
        return Case(MAIN, IMAGE, 968 * 1024, 0.1, linked, full, ready_bound_s=95.0)
    return Case(LARGE, LARGE_IMAGE, 513 * 2**20, 2.5, linked, full, ready_bound_s=20.0,
                data_mib=512)


def test_parallelism_is_the_workers() -> None:
    for cls in (JobRunner, PoolWorker):
        default = inspect.signature(cls.__init__).parameters["per_host_parallel"].default
        assert default == PER_HOST_PARALLEL


def test_order_alternates_fairly() -> None:
    """Linked, full, full, linked: each mode once first and once second in a pair."""
    sequence = [mode for order in PAIR_ORDERS for mode in order]
    assert sequence == [LINKED, FULL, FULL, LINKED]
    for mode in (LINKED, FULL):
        assert sorted(order.index(mode) for order in PAIR_ORDERS) == [0, 1]
    assert provision.FULL_DESKTOPS % 2 == 0 and provision.QUICK_DESKTOPS % 2 == 0
    assert provision.LARGE_DESKTOPS % 2 == 0 and provision.QUICK_LARGE_DESKTOPS % 2 == 0


def test_mode_adds_up_its_halves() -> None:
    r = mode_run(LINKED, count=4, create_s=0.4, second_create_s=1.0)
    assert [h.position for h in r.halves] == [1, 2]
    assert r.requested == 4
    first, second = r.half(1), r.half(2)
    assert first is not None and second is not None
    assert round(first.all_running_s, 2) == 0.41
    assert round(second.all_running_s, 2) == 1.01
    assert round(r.all_running_s, 2) == 1.42
    assert r.ready_count == 4
    assert r.teardown_s == 4.0


def test_section_compares_linked_and_full() -> None:
    linked = mode_run(LINKED, create_s=0.4, allocated=320 * 1024)
    full = mode_run(FULL, create_s=0.8, allocated=1024 * 1024)
    section = build_section([case(linked, full)], quick=False, skipped=[], seconds=120.0)

    assert section.name == "provision"
    assert section.targets == []
    assert section.summary.count("Linked clones had all 4 running") == 1
    assert "0.8 s sooner than full copies (0.8 s vs 1.6 s, 49 % less; idle-host half + " \
        "second half: 0.4 + 0.4 s linked, 0.8 + 0.8 s full)" in section.summary
    assert "linked clones then full copies; pair 2: full copies then linked clones" \
        in section.summary
    assert "every guest printed VDI-READY" in section.summary
    table = section.tables[0]
    assert table.columns == ["", "linked clones, 2 at a time", "full copies, 2 at a time"]
    rows = {row[0]: row[1:] for row in table.rows}
    assert rows["desktops per mode (two halves)"] == ["4 (2 + 2)", "4 (2 + 2)"]
    assert rows["all 4 running: the two halves added up (s)"] == [0.8, 1.6]
    assert rows["half on an idle host: all running (s)"] == [0.4, 0.8]
    assert rows["all VDI-READY after the half's first call: idle-host half; second half (s)"] \
        == ["10.5; 10.5", "10.9; 10.9"]
    assert rows["create_desktop per desktop p50 (ms)"] == [405.0, 805.0]
    assert rows["disk allocated per desktop, mean (KiB)"] == [320.0, 1024.0]
    ready_row = "guests VDI-READY within the bound / of them with their disk mounted"
    assert rows[ready_row] == ["4 of 4 / 4", "4 of 4 / 4"]
    assert rows["other guests running on the machine"] == [1, 1]
    assert rows["load average (1 min) before → max: idle-host half; second half"] == [
        "0.3 → 7.5; 4.0 → 7.5", "0.3 → 7.5; 4.0 → 7.5"]
    assert "Not every guest" not in table.note
    assert "Order: pair 1: linked clones then full copies; pair 2: full copies then " \
        "linked clones (linked, full, full, linked)" in table.note
    assert "Machine load" in table.note
    assert section.figures["linked_x2_all_running_s"] == 0.8
    assert section.figures["full_x2_allocated_mean_bytes"] == 1024 * 1024
    assert section.figures["linked_x2_idle_half_pair"] == 1
    assert section.figures["full_x2_idle_half_pair"] == 2
    assert section.figures["order"].startswith("pair 1: linked clones then full copies")
    assert list(section.figures)[:2] == ["linked_x2_all_running_s", "full_x2_all_running_s"]
    times = next(p for p in section.plots if p.filename == "provision-times.png")
    assert times.series["linked clones, 2 at a time"] == [
        ("idle-host half", 0.4), ("second half", 0.4), ("both halves", 0.8)]


def test_large_image_case_is_a_table_of_its_own() -> None:
    main = case(mode_run(LINKED, count=50), mode_run(FULL, count=50))
    large = case(mode_run(LINKED, count=10, create_s=0.3),
                 mode_run(FULL, count=10, create_s=1.5, allocated=513 * 2**20), key=LARGE)
    section = build_section([main, large], quick=False, skipped=[], seconds=280.0)

    assert [t.title for t in section.tables] == [
        "Provisioning 50 floating desktops on one host",
        "Provisioning 10 floating desktops from an image with 512 MiB allocated"]
    big = section.tables[1]
    assert big.columns[1:] == ["linked clones, 2 at a time, 512 MiB image",
                               "full copies, 2 at a time, 512 MiB image"]
    rows = {row[0]: row[1:] for row in big.rows}
    assert rows["disk allocated per desktop, mean (MiB)"] == [0.3, 513.0]
    assert "Fewer desktops than from the small image (10 per mode, not 50)" in big.note
    assert "512 MiB of non-zero bytes written after the file system" in big.note
    assert "From the image with 512 MiB of allocated data (10 desktops per mode" \
        in section.summary
    assert "(linked) vs 513.0 MiB (full)" in section.summary
    assert section.figures["large_full_x2_all_running_s"] == 9.1
    assert section.figures["large_data_mib"] == 512
    assert list(section.figures)[:4] == [
        "linked_x2_all_running_s", "full_x2_all_running_s",
        "large_linked_x2_all_running_s", "large_full_x2_all_running_s"]


def test_guests_not_ready_within_the_bound_are_reported_honestly() -> None:
    linked = mode_run(LINKED, count=10, ready=3)
    full = mode_run(FULL, count=10, ready=2, create_s=0.6)
    section = build_section([case(linked, full)], quick=False,
                            skipped=["the 512 MiB image (10 desktops per mode): 40 s of the "
                                     "budget left, it needs about 74 s"], seconds=240.0)

    rows = {row[0]: row[1:] for row in section.tables[0].rows}
    cell = rows["all VDI-READY after the half's first call: idle-host half; second half (s)"]
    assert cell[0] == "not all: 3/5 within 95 s; not all: 3/5 within 90 s"
    note = section.tables[0].note
    assert "Not every guest printed VDI-READY within the bound" in note
    assert "linked clones, 2 at a time: 6 of 10" in note
    assert "Not measured: the 512 MiB image (10 desktops per mode): 40 s of the budget" in note
    assert "6 of 10 linked clones and 4 of 10 full copies printed VDI-READY" in section.summary
    assert "Not measured: the 512 MiB image" in section.summary
    assert section.figures["linked_x2_idle_half_all_ready_s"] is None
    assert section.figures["linked_x2_ready"] == 6


def test_write_back_left_by_copies_is_called_out() -> None:
    linked = mode_run(LINKED)
    second = linked.half(2)
    assert second is not None
    second.load.dirty_mib_before = 1800.0
    section = build_section([case(linked, mode_run(FULL))], quick=False, skipped=[],
                            seconds=100.0)
    note = section.tables[0].note
    assert "still being written to disk when a half started (linked clones, pair 2: " \
        "1800 MiB)" in note
    rows = {row[0]: row[1:] for row in section.tables[0].rows}
    assert rows["data not yet written to disk at the half's start (MiB): idle-host half; "
                "second half"] == ["0; 1800", "0; 0"]
    clean = build_section([case(mode_run(LINKED), mode_run(FULL))], quick=False, skipped=[],
                          seconds=100.0)
    assert "still being written" not in clean.tables[0].note


def test_same_times_are_not_called_faster() -> None:
    assert "at the same time" in comparison(mode_run(LINKED), mode_run(FULL))


def test_timeline_starts_at_the_half() -> None:
    h = half(LINKED, 1, 2, count=3, ready=2, offset_s=5.0)
    assert timeline(h, ready=False)[0] == (5.0, 0.0)
    assert [n for _, n in timeline(h, ready=True)] == [0.0, 1.0, 2.0]
    assert [n for _, n in timeline(h, ready=False)] == [0.0, 1.0, 2.0, 3.0]
    assert timeline(h, ready=False)[1][0] == 5.5


def test_runner_and_report_handle_a_section_without_targets(tmp_path: Path) -> None:
    assert DEFAULT_ORDER.index("first_pixel") < DEFAULT_ORDER.index("provision") \
        < DEFAULT_ORDER.index("login_storm")
    assert sum(FULL_TIMEOUT_S.values()) <= 45 * 60  # `make bench` within 45 minutes
    # what the budget leaves is enough to remove the last pair's desktops
    assert FULL_TIMEOUT_S["provision"] - provision.FULL_BUDGET_S >= 30
    section = build_section([case(mode_run(LINKED), mode_run(FULL, create_s=0.7))],
                            quick=False, skipped=[], seconds=100.0)
    entry = SectionEntry(name="provision", status="ok", date="2026-11-25T10:00:00+00:00",
                         quick=False, seconds=101.0, machine={}, result=section)
    lines = summary_lines(entry)
    assert lines[0].startswith("provision")
    assert "linked_x2_all_running_s=1, full_x2_all_running_s=1.4" in lines[1]

    doc = tmp_path / "benchmarks.md"
    render(Results(updated="2026-11-25T10:02:00+00:00", order=list(DEFAULT_ORDER),
                   sections={"provision": entry}), doc, tmp_path / "bench")
    text = doc.read_text(encoding="utf-8")
    assert "| [Provisioning a floating pool](#provisioning-a-floating-pool) | ok |" in text
    row = next(line for line in text.splitlines() if "#provisioning-a-floating-pool" in line)
    assert row.rstrip().endswith("| – |")  # no targets: a dash, not "0/0 met"
    assert "**Targets**" not in text
    assert "### Provisioning 4 floating desktops on one host" in text
    for name in ("provision-times.png", "provision-create.png", "provision-timeline.png"):
        assert (tmp_path / "bench" / name).read_bytes()[:4] == b"\x89PNG"


def test_names_stay_in_our_prefix() -> None:
    names = [n for pair in (1, 2) for case_key in (MAIN, LARGE) for mode in (LINKED, FULL)
             for n in provision.desktop_names(case_key, mode, pair, 25)]
    assert len(set(names)) == len(names) == 200
    assert all(n.startswith("vdib-prov-") for n in names)
    # qemu_rss_mib selects a half's guests by prefix: no half's prefix starts another's
    prefixes = {n.rsplit("-", 1)[0] + "-" for n in names}
    assert len(prefixes) == 8
    assert not any(a != b and b.startswith(a) for a in prefixes for b in prefixes)
    assert provision.IMAGE_ID.startswith("vdib-prov-")
    assert provision.LARGE_IMAGE_ID.startswith("vdib-prov-")
    assert provision.STORAGE_POOL == "vdi-bench"


def test_large_disk_need_counts_a_halfs_copies() -> None:
    assert provision.large_disk_need(10, 512) == (3 + 5) * 512 * 2**20 + 2**30


def test_unequal_load_is_called_out() -> None:
    linked = mode_run(LINKED)
    for h in linked.halves:
        h.load.other_guests = 5
    full = mode_run(FULL, create_s=0.3)
    for h in full.halves:
        h.load.other_guests = 0
    assert "Caution: other work shared the machine unequally (5 other guests" in comparison(
        linked, full)
    assert "Caution" not in comparison(mode_run(LINKED), mode_run(FULL))
