"""The benchmark report renderer on synthetic results: no benchmark runs, no timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import Plot, Section, Table, Target
from bench.report import (
    HEADER_BEGIN,
    HEADER_END,
    Results,
    SectionEntry,
    fmt_value,
    load,
    markdown_table,
    merge,
    render,
    save,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MACHINE = {"cpu": "Test CPU", "cores": 2, "memory_gib": 4.0, "python": "3.11.7",
           "os": "Linux-test"}


def synthetic_section() -> Section:
    return Section(
        name="tunnel", title="Tunnel throughput",
        summary="The broker relays 1.8x the bytes of websockify.",
        tables=[Table(title="Throughput (MB/s)", columns=["relay", "down", "up"],
                      rows=[["raw TCP", 2100.5, 1987.25], ["broker", 900.0, 850.4],
                            ["websockify | numpy", 500, 450]],
                      note="one stream, 64 KiB messages")],
        plots=[Plot(filename="tunnel-throughput.png", title="Throughput", xlabel="relay",
                    ylabel="MB/s", kind="bar",
                    series={"down": [("raw TCP", 2100.5), ("broker", 900.0)],
                            "up": [("raw TCP", 1987.25), ("broker", 850.4)]}),
               Plot(filename="tunnel-streams.png", title="Many streams", xlabel="streams",
                    ylabel="MB/s", kind="line",
                    series={"broker": [(1, 900.0), (10, 700.0), (100, 300.0)]})],
        targets=[Target(name="vs websockify", goal=">= 1.5x", value="1.8x", met=True),
                 Target(name="vs raw TCP", goal=">= 40 %", value="31 %", met=False)],
        figures={"ratio": 1.8}, seconds=12.5)


def results_with(*entries: SectionEntry) -> Results:
    return Results(updated="2026-11-25T10:00:00+00:00", machine=MACHINE,
                   order=["tunnel", "first_pixel", "login_storm"],
                   sections={e.name: e for e in entries})


def ok_entry(section: Section) -> SectionEntry:
    return SectionEntry(name=section.name, status="ok", date="2026-11-25T09:58:00+00:00",
                        quick=False, seconds=13.0, machine=MACHINE, result=section)


def test_markdown_has_tables_targets_and_plots(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "benchmarks.md"
    plots = tmp_path / "docs" / "bench"
    written = render(results_with(ok_entry(synthetic_section())), doc, plots)

    text = doc.read_text(encoding="utf-8")
    assert "## Tunnel throughput" in text
    assert "| relay | down | up |" in text
    assert "| raw TCP | 2100.5 | 1987.2 |" in text
    assert "websockify \\| numpy" in text  # a pipe in a cell does not break the table
    assert "_one stream, 64 KiB messages_" in text
    assert "- [x] vs websockify: goal >= 1.5x, measured **1.8x** (met)" in text
    assert "- [ ] vs raw TCP: goal >= 40 %, measured **31 %** (**missed**)" in text
    assert "| [Tunnel throughput](#tunnel-throughput) | ok |" in text
    assert "1/2 met" in text
    assert "Test CPU, 2 cores" in text
    assert "![Throughput](bench/tunnel-throughput.png)" in text
    assert "![Many streams](bench/tunnel-streams.png)" in text
    for name in ("tunnel-throughput.png", "tunnel-streams.png"):
        png = plots / name
        assert png in written
        assert png.read_bytes()[:8] == PNG_MAGIC


def test_hand_written_header_is_kept(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"{HEADER_BEGIN}\n# Our benchmarks\n\nHand-written words.\n{HEADER_END}\n"
                   "old generated text\n", encoding="utf-8")
    render(results_with(ok_entry(synthetic_section())), doc, tmp_path / "bench")
    render(results_with(ok_entry(synthetic_section())), doc, tmp_path / "bench")

    text = doc.read_text(encoding="utf-8")
    assert text.startswith(f"{HEADER_BEGIN}\n# Our benchmarks\n\nHand-written words.\n"
                           f"{HEADER_END}\n")
    assert "old generated text" not in text
    assert text.count("## Tunnel throughput") == 1


def test_failed_section_is_reported_and_keeps_previous_figures(tmp_path: Path) -> None:
    results = results_with(ok_entry(synthetic_section()))
    failed = SectionEntry(name="tunnel", status="failed", date="2026-11-26T08:00:00+00:00",
                          quick=False, seconds=3.0, machine=MACHINE,
                          error="Traceback ...\nRuntimeError: websockify did not start")
    merge(results, failed)
    results.sections["login_storm"] = SectionEntry(
        name="login_storm", status="missing", date="2026-11-26T08:01:00+00:00", quick=False,
        seconds=0.5, machine=MACHINE, error="no module bench/login_storm.py")
    doc = tmp_path / "benchmarks.md"
    render(results, doc, tmp_path / "bench")

    text = doc.read_text(encoding="utf-8")
    assert "failed:** RuntimeError: websockify did not start" in text
    assert "previous run on 2026-11-25 09:58 UTC" in text
    assert "| raw TCP | 2100.5 | 1987.2 |" in text  # the previous figures, still shown
    assert "## login_storm" in text and "no module bench/login_storm.py" in text
    assert "| FAILED |" in text and "| MISSING |" in text


def test_results_round_trip_through_json(tmp_path: Path) -> None:
    path = tmp_path / "latest.json"
    save(results_with(ok_entry(synthetic_section())), path)
    loaded = load(path)
    section = loaded.sections["tunnel"].result
    assert section is not None
    assert section == synthetic_section()
    assert loaded.machine == MACHINE


def test_bad_plot_name_is_reported_not_fatal(tmp_path: Path) -> None:
    section = synthetic_section()
    section.plots = [Plot(filename="../escape.png", title="t", xlabel="x", ylabel="y",
                          series={"a": [("x", 1.0)]})]
    doc = tmp_path / "benchmarks.md"
    render(results_with(ok_entry(section)), doc, tmp_path / "bench")
    assert "could not be drawn" in doc.read_text(encoding="utf-8")
    assert not (tmp_path / "escape.png").exists()


@pytest.mark.parametrize(("value", "text"), [
    (28.3, "28.3"), (315.25, "315.2"), (12345.6, "12,346"), (0.01234, "0.0123"),
    (5.0, "5"), (True, "yes"), (None, "–"), ("1.8x", "1.8x")])
def test_values_are_formatted_for_reading(value: object, text: str) -> None:
    assert fmt_value(value) == text


def test_short_rows_are_padded() -> None:
    table = Table(title="t", columns=["a", "b", "c"], rows=[[1]])
    assert markdown_table(table).splitlines()[-1] == "| 1 |  |  |"


def test_sections_not_run_yet_are_listed(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    render(results_with(ok_entry(synthetic_section())), doc, tmp_path / "bench")
    assert "| login_storm | not run yet |" in doc.read_text(encoding="utf-8")
