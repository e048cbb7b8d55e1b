"""The provisioning section's pure parts on synthetic measurements: no libvirt, no guest."""

from __future__ import annotations

import inspect
from pathlib import Path

from bench import provision
from bench.__main__ import DEFAULT_ORDER, FULL_TIMEOUT_S, summary_lines
from bench.provision import (
    FULL,
    LINKED,
    PER_HOST_PARALLEL,
    DesktopRun,
    LoadStats,
    ModeRun,
    build_section,
    comparison,
    timeline,
)
from bench.report import Results, SectionEntry, render
from pools.hypervisor import ImageFiles
from pools.jobs import JobRunner
from pools.worker import PoolWorker

IMAGE = ImageFiles(disk_path="/var/lib/libvirt/images/vdi-bench/img-disk.qcow2",
                   kernel_path="/k", initrd_path="/i", cmdline="console=ttyS0",
                   disk_bytes=64 * 2**20)


def mode_run(mode: str, *, count: int = 4, create_s: float = 0.5, boot_s: float = 10.0,
             ready: int | None = None, allocated: int = 320 * 1024,
             parallel: int = PER_HOST_PARALLEL) -> ModeRun:
    """`count` desktops created `parallel` at a time, each call taking `create_s`, each
    guest VDI-READY `boot_s` after its call returned; only the first `ready` got there."""
    ready = count if ready is None else ready
    desktops = []
    for i in range(count):
        started = (i // parallel) * create_s
        created = started + create_s + 0.01 * i
        desktops.append(DesktopRun(
            name=f"vdib-prov-{mode}{parallel}-{i + 1:02d}", started_s=started,
            created_s=created, allocated_bytes=allocated,
            ready_s=created + boot_s + 0.1 * i if i < ready else None, disk_ok=i < ready))
    return ModeRun(mode=mode, parallel=parallel, requested=count, desktops=desktops,
                   all_running_s=max(d.created_s for d in desktops), ready_bound_s=95.0,
                   load=LoadStats(load_1m_before=0.3, load_1m_max=7.5, cpu_busy=0.97,
                                  other_guests=1),
                   qemu_rss_mib=200.0 * count, teardown_s=4.0)


def test_parallelism_is_the_workers() -> None:
    for cls in (JobRunner, PoolWorker):
        default = inspect.signature(cls.__init__).parameters["per_host_parallel"].default
        assert default == PER_HOST_PARALLEL


def test_section_compares_linked_and_full() -> None:
    linked = mode_run(LINKED, create_s=0.4, allocated=320 * 1024)
    full = mode_run(FULL, create_s=0.8, allocated=1024 * 1024)
    section = build_section([linked, full], quick=False, image=IMAGE,
                            image_allocated=968 * 1024, publish_s=0.1, skipped=[],
                            seconds=120.0)

    assert section.name == "provision"
    assert section.targets == []
    assert section.summary.count("Linked clones had all 4 running") == 1
    assert "0.8 s sooner than full copies (0.8 s vs 1.6 s, 49 % less)" in section.summary
    assert "every guest at VDI-READY" in section.summary
    table = section.tables[0]
    assert table.columns == ["", "linked clones, 2 at a time", "full copies, 2 at a time"]
    rows = {row[0]: row[1:] for row in table.rows}
    assert rows["all create_desktop calls returned, all running (s)"] == [0.8, 1.6]
    assert rows["all guests printed VDI-READY (s)"] == ["11.1", "11.9"]
    assert rows["create_desktop per desktop p50 (ms)"] == [415.0, 815.0]
    assert rows["disk allocated per desktop, mean (KiB)"] == [320.0, 1024.0]
    ready_row = "guests VDI-READY within the bound / of them with their disk mounted"
    assert rows[ready_row] == ["4 / 4", "4 / 4"]
    assert rows["other guests running on the machine"] == [1, 1]
    assert rows["load average (1 min) before → max"] == ["0.3 → 7.5", "0.3 → 7.5"]
    assert "Not every guest" not in table.note
    assert "Machine load" in table.note
    assert section.figures["linked_x2_all_running_s"] == 0.8
    assert section.figures["full_x2_allocated_mean_bytes"] == 1024 * 1024
    assert list(section.figures)[:4] == ["linked_x2_all_running_s", "linked_x2_all_ready_s",
                                         "full_x2_all_running_s", "full_x2_all_ready_s"]
    times = next(p for p in section.plots if p.filename == "provision-times.png")
    assert times.series["linked clones, 2 at a time"] == [("all running", 0.8),
                                                          ("all VDI-READY", 11.1)]


def test_guests_not_ready_within_the_bound_are_reported_honestly() -> None:
    linked = mode_run(LINKED, count=10, ready=7)
    full = mode_run(FULL, count=10, ready=5, create_s=0.6)
    section = build_section([linked, full], quick=False, image=IMAGE,
                            image_allocated=968 * 1024, publish_s=0.1,
                            skipped=["linked clones, 4 at a time"], seconds=240.0)

    rows = {row[0]: row[1:] for row in section.tables[0].rows}
    assert rows["all guests printed VDI-READY (s)"] == ["not all: 7/10 within 95 s",
                                                        "not all: 5/10 within 95 s"]
    assert "first 5 guests printed VDI-READY (s)" in rows
    note = section.tables[0].note
    assert "Not every guest printed VDI-READY within the bound" in note
    assert "linked clones, 2 at a time: 7 of 10 within 95 s" in note
    assert "Not measured for lack of time in the section's budget: linked clones, 4" in note
    assert "7 of 10 linked clones and 5 of 10 full copies printed VDI-READY" in section.summary
    assert "had 5 guests at VDI-READY" in section.summary
    assert section.figures["linked_x2_all_ready_s"] is None
    assert section.figures["linked_x2_ready"] == 7
    times = next(p for p in section.plots if p.filename == "provision-times.png")
    assert [x for x, _ in times.series["full copies, 2 at a time"]] == [
        "all running", "first 5 VDI-READY"]


def test_same_times_are_not_called_faster() -> None:
    linked = mode_run(LINKED)
    full = mode_run(FULL)
    assert "at the same time" in comparison(linked, full)


def test_timeline_counts_from_zero() -> None:
    run = mode_run(LINKED, count=3, ready=2)
    assert timeline(run, ready=False)[0] == (0.0, 0.0)
    assert [n for _, n in timeline(run, ready=True)] == [0.0, 1.0, 2.0]
    assert [n for _, n in timeline(run, ready=False)] == [0.0, 1.0, 2.0, 3.0]


def test_runner_and_report_handle_a_section_without_targets(tmp_path: Path) -> None:
    assert DEFAULT_ORDER.index("first_pixel") < DEFAULT_ORDER.index("provision") \
        < DEFAULT_ORDER.index("login_storm")
    assert FULL_TIMEOUT_S["provision"] <= 330
    section = build_section([mode_run(LINKED), mode_run(FULL, create_s=0.7)], quick=False,
                            image=IMAGE, image_allocated=968 * 1024, publish_s=0.1,
                            skipped=[], seconds=100.0)
    entry = SectionEntry(name="provision", status="ok", date="2026-11-25T10:00:00+00:00",
                         quick=False, seconds=101.0, machine={}, result=section)
    lines = summary_lines(entry)
    assert lines[0].startswith("provision")
    assert "linked_x2_all_running_s=1, linked_x2_all_ready_s=11.3" in lines[1]

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
    names = provision.desktop_names(FULL, 4, 50)
    assert len(set(names)) == 50
    assert all(n.startswith("vdib-prov-") for n in names)
    assert provision.IMAGE_ID.startswith("vdib-prov-")
    assert provision.STORAGE_POOL == "vdi-bench"


def test_unequal_load_is_called_out() -> None:
    linked = mode_run(LINKED)
    linked.load.other_guests = 5
    full = mode_run(FULL, create_s=0.3)
    full.load.other_guests = 0
    assert "Caution: other work shared the machine unequally (5 other guests" in comparison(
        linked, full)
    assert "Caution" not in comparison(mode_run(LINKED), mode_run(FULL))
