"""The stored results of benchmark runs, and docs/benchmarks.md rendered from them.

`bench/results/latest.json` holds one entry per section: its status, when and on which
machine it was measured, and the Section it returned (bench.common). A run of some
sections replaces only their entries, so the published document always shows every
section's latest figures with the date they were measured. When a section fails, its
entry says so and keeps the previous figures, marked as such.

The document has a hand-written part between HEADER_BEGIN and HEADER_END that rendering
keeps; everything after it is generated. Plots are PNG files (matplotlib, Agg backend)
next to the document, linked from it.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Plot, Section, Table, Target

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
LATEST = RESULTS_DIR / "latest.json"
DOC = REPO / "docs" / "benchmarks.md"
PLOTS_DIR = REPO / "docs" / "bench"

HEADER_BEGIN = "<!-- bench:header:begin (hand-written: `python -m bench` keeps this part) -->"
HEADER_END = "<!-- bench:header:end (everything below is generated from bench/results) -->"

STATUS_TEXT = {"ok": "ok", "failed": "FAILED", "missing": "MISSING", "timeout": "TIMED OUT"}

DEFAULT_HEADER = """# Benchmarks

Where the broker stands against websockify and against the physical limit of this
machine, measured end to end on the real parts (OpenLDAP slapd, libvirtd with TCG
guests, headless Debian Chromium). Issue 3 sets the targets.

```sh
make bench                          # everything (under 15 minutes on 2 cores)
.venv/bin/python -m bench --quick   # smoke run with small sizes (bench/results/quick/)
.venv/bin/python -m bench first_pixel   # one section; the others keep their figures
.venv/bin/python -m bench --report-only # re-render this page from bench/results/latest.json
```

Each section runs in its own process, starts the real parts it needs and removes them
afterwards. Sections run one after another, on a machine left idle in between, in the
order tunnel, first_pixel, login_storm: the CPU-bound tunnel figures come first, before
any guest has booted. Figures are from `bench/results/latest.json`; the date and the
machine of each section are shown with it.
"""


@dataclass
class SectionEntry:
    """One section's latest run."""

    name: str
    status: str  # ok | failed | missing | timeout
    date: str  # ISO 8601 UTC, when this run started
    quick: bool
    seconds: float  # wall time of the section's process
    machine: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    result: Section | None = None
    # set when `result` is from an earlier run (this one failed): that run's date
    result_date: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"] = self.result.to_json() if self.result else None
        return d


@dataclass
class Results:
    updated: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    sections: dict[str, SectionEntry] = field(default_factory=dict)

    def ordered(self) -> list[SectionEntry]:
        names = [n for n in self.order if n in self.sections]
        names += sorted(n for n in self.sections if n not in names)
        return [self.sections[n] for n in names]

    def to_json(self) -> dict[str, Any]:
        return {"updated": self.updated, "machine": self.machine, "order": self.order,
                "sections": {n: e.to_json() for n, e in self.sections.items()}}


# -- JSON ---------------------------------------------------------------------------------


def section_from_json(d: dict[str, Any]) -> Section:
    return Section(
        name=d["name"], title=d.get("title", d["name"]), summary=d.get("summary", ""),
        tables=[Table(title=t["title"], columns=list(t["columns"]),
                      rows=[list(r) for r in t["rows"]], note=t.get("note", ""))
                for t in d.get("tables", [])],
        plots=[Plot(filename=p["filename"], title=p["title"], xlabel=p["xlabel"],
                    ylabel=p["ylabel"], kind=p.get("kind", "bar"),
                    series={k: [(pt[0], float(pt[1])) for pt in v]
                            for k, v in p["series"].items()})
               for p in d.get("plots", [])],
        targets=[Target(name=t["name"], goal=t["goal"], value=str(t["value"]),
                        met=bool(t["met"])) for t in d.get("targets", [])],
        figures=dict(d.get("figures", {})), seconds=float(d.get("seconds", 0.0)))


def entry_from_json(d: dict[str, Any]) -> SectionEntry:
    result = d.get("result")
    return SectionEntry(
        name=d["name"], status=d["status"], date=d.get("date", ""),
        quick=bool(d.get("quick", False)), seconds=float(d.get("seconds", 0.0)),
        machine=dict(d.get("machine", {})), error=d.get("error", ""),
        result=section_from_json(result) if result else None,
        result_date=d.get("result_date", ""))


def load(path: Path) -> Results:
    """The stored results, or empty ones if the file does not exist yet."""
    if not path.exists():
        return Results()
    d = json.loads(path.read_text(encoding="utf-8"))
    return Results(updated=d.get("updated", ""), machine=dict(d.get("machine", {})),
                   order=list(d.get("order", [])),
                   sections={n: entry_from_json(e) for n, e in d.get("sections", {}).items()})


def jsonable(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results.to_json(), indent=1, ensure_ascii=False,
                              default=jsonable) + "\n", encoding="utf-8")
    tmp.replace(path)


def merge(old: Results, new: SectionEntry) -> None:
    """Put `new` into `old`; a failed run keeps the previous figures, marked as older."""
    prev = old.sections.get(new.name)
    if new.status != "ok" and new.result is None and prev is not None and prev.result:
        new.result = prev.result
        new.result_date = prev.result_date or prev.date
    old.sections[new.name] = new


# -- formatting ---------------------------------------------------------------------------


def fmt_value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v == int(v) and abs(v) < 1e15:
            return fmt_value(int(v))
        if abs(v) >= 10_000:
            return f"{v:,.0f}"
        if abs(v) < 1:
            return f"{v:.3g}"
        text = f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"
        return text.rstrip("0").rstrip(".")
    return str(v)


def _cell(v: Any) -> str:
    return fmt_value(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(_cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    for row in table.rows:
        cells = [_cell(v) for v in row] + [""] * (len(table.columns) - len(row))
        lines.append("| " + " | ".join(cells[:len(table.columns)]) + " |")
    return "\n".join(lines)


def slug(title: str) -> str:
    """The anchor GitHub gives a heading."""
    s = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return s.replace(" ", "-")


def _date(iso: str) -> str:
    return iso.replace("T", " ")[:16] + " UTC" if iso else "–"


def machine_line(m: dict[str, Any]) -> str:
    if not m:
        return "unknown"
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
            f"{fmt_value(m.get('memory_gib', '?'))} GiB RAM; {m.get('os', '?')}; "
            f"Python {m.get('python', '?')}")


def target_line(t: Target) -> str:
    mark = "x" if t.met else " "
    verdict = "met" if t.met else "**missed**"
    return f"- [{mark}] {t.name}: goal {t.goal}, measured **{t.value}** ({verdict})"


# -- plots --------------------------------------------------------------------------------


def _safe_filename(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.png", name):
        raise ValueError(f"plot filename {name!r} must be a plain name ending in .png")
    return name


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def draw_plot(plot: Plot, path: Path) -> None:
    """One PNG: grouped bars for categories on x, lines for numeric x."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    ax = fig.subplots()
    values = [y for pts in plot.series.values() for _, y in pts if not math.isnan(y)]
    positive = bool(values) and min(values) > 0
    log_y = positive and max(values) / min(values) >= 50
    xs_all = [x for pts in plot.series.values() for x, _ in pts]
    if plot.kind == "line" and xs_all and all(_is_number(x) for x in xs_all):
        for name, pts in plot.series.items():
            ordered = sorted(pts, key=lambda p: float(p[0]))
            ax.plot([float(x) for x, _ in ordered], [y for _, y in ordered], marker="o",
                    markersize=4, linewidth=1.6, label=name)
        nums = [float(x) for x in xs_all]
        if min(nums) > 0 and max(nums) / min(nums) >= 100:
            ax.set_xscale("log")
        elif all(float(x).is_integer() for x in xs_all):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if values and min(values) >= 0 and not log_y:
            ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    else:
        categories: list[str] = []
        for pts in plot.series.values():
            for x, _ in pts:
                if str(x) not in categories:
                    categories.append(str(x))
        n = max(1, len(plot.series))
        width = 0.8 / n
        for i, (name, pts) in enumerate(plot.series.items()):
            by_cat = {str(x): y for x, y in pts}
            pos = [c + (i - (n - 1) / 2) * width for c in range(len(categories))]
            heights = [by_cat.get(cat, math.nan) for cat in categories]
            bars = ax.bar(pos, heights, width * 0.95, label=name)
            ax.bar_label(bars, labels=[fmt_value(h) if not math.isnan(h) else ""
                                       for h in heights], fontsize=7, padding=2)
        ax.set_xticks(range(len(categories)))
        long_labels = len(categories) > 6 or any(len(c) > 12 for c in categories)
        ax.set_xticklabels(categories, rotation=20 if long_labels else 0,
                           ha="right" if long_labels else "center", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.12)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(plot.title, fontsize=11)
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel + (" (log scale)" if log_y else ""))
    if len(plot.series) > 1:
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


# -- the document -------------------------------------------------------------------------


def _header(doc: Path) -> str:
    """The hand-written part of an existing document (markers included)."""
    if doc.exists():
        text = doc.read_text(encoding="utf-8")
        begin = text.find("<!-- bench:header:begin")
        end = text.find("<!-- bench:header:end")
        if begin != -1 and end > begin:
            end = text.index("-->", end) + 3
            return text[begin:end]
    return f"{HEADER_BEGIN}\n{DEFAULT_HEADER}{HEADER_END}"


def render_markdown(results: Results, header: str, plot_links: dict[str, str],
                    plot_errors: dict[str, str] | None = None, source: str = "") -> str:
    """The whole document. plot_links maps a plot's filename to its link target."""
    plot_errors = plot_errors or {}
    out: list[str] = [header, ""]
    out.append(f"<!-- generated by `python -m bench` from {source or 'the stored results'} "
               "-->")
    out += ["", "## Latest run", "",
            f"- Updated: {_date(results.updated)}",
            f"- Machine: {machine_line(results.machine)}", ""]
    entries = results.ordered()
    if not entries:
        out += ["No section has been run yet.", ""]
    else:
        out += ["| section | status | measured | run time | targets |",
                "|---|---|---|---|---|"]
        for e in entries:
            title = e.result.title if e.result else e.name
            met = sum(t.met for t in e.result.targets) if e.result else 0
            total = len(e.result.targets) if e.result else 0
            targets = f"{met}/{total} met" if total else "–"
            status = STATUS_TEXT.get(e.status, e.status) + (" (quick)" if e.quick else "")
            when = _date(e.result_date if e.result_date else e.date)
            out.append(f"| [{_cell(title)}](#{slug(title)}) | {status} | {when} | "
                       f"{e.seconds:.0f} s | {targets} |")
        for name in results.order:
            if name not in results.sections:
                out.append(f"| {_cell(name)} | not run yet | – | – | – |")
        out.append("")
    for e in entries:
        out += _section_markdown(e, results.machine, plot_links, plot_errors)
    return "\n".join(out).rstrip() + "\n"


def _section_markdown(e: SectionEntry, machine: dict[str, Any], plot_links: dict[str, str],
                      plot_errors: dict[str, str]) -> list[str]:
    s = e.result
    out = ["", f"## {s.title if s else e.name}", ""]
    if e.status != "ok":
        what = {"missing": "could not be loaded", "timeout": "did not finish in time",
                "failed": "failed"}.get(e.status, e.status)
        out += [f"> **The run of section `{e.name}` on {_date(e.date)} {what}:** "
                + (e.error.strip().splitlines()[-1] if e.error.strip() else "no detail"), ""]
        if s and e.result_date:
            out += [f"> The figures below are from the previous run on {_date(e.result_date)}.",
                    ""]
        if e.error.strip():
            out += ["<details><summary>error</summary>", "", "```",
                    e.error.strip()[-4000:], "```", "", "</details>", ""]
    if s is None:
        return out
    if e.quick:
        out += ["> Quick (smoke) run: sizes are reduced, the figures are not the published "
                "ones.", ""]
    if e.machine and machine and e.machine != machine:
        out += [f"Measured on: {machine_line(e.machine)}", ""]
    out += [f"Measured {_date(e.result_date or e.date)}, section run time {e.seconds:.0f} s.",
            ""]
    if s.summary:
        out += [s.summary.strip(), ""]
    if s.targets:
        out += ["**Targets**", ""] + [target_line(t) for t in s.targets] + [""]
    for t in s.tables:
        out += [f"### {t.title}", "", markdown_table(t), ""]
        if t.note:
            out += [f"_{t.note.strip()}_", ""]
    for p in s.plots:
        if p.filename in plot_links:
            out += [f"![{p.title}]({plot_links[p.filename]})", ""]
        else:
            out += [f"_Plot {p.filename} could not be drawn: "
                    f"{plot_errors.get(p.filename, 'unknown error')}_", ""]
    if s.figures:
        out += ["<details><summary>raw figures</summary>", "", "```json",
                json.dumps(s.figures, indent=1, ensure_ascii=False, default=jsonable),
                "```", "", "</details>", ""]
    return out


def render(results: Results, doc: Path = DOC, plots_dir: Path = PLOTS_DIR,
           source: str = "") -> list[Path]:
    """Write the plots and the document; returns the files written. Plots no section
    produces any more are removed from plots_dir."""
    links: dict[str, str] = {}
    errors: dict[str, str] = {}
    written: list[Path] = []
    for e in results.ordered():
        for p in e.result.plots if e.result else []:
            try:
                path = plots_dir / _safe_filename(p.filename)
                draw_plot(p, path)
            except Exception as exc:  # one bad plot must not lose the document
                errors[p.filename] = f"{type(exc).__name__}: {exc}"
                continue
            links[p.filename] = Path(os.path.relpath(path, doc.parent)).as_posix()
            written.append(path)
    if plots_dir.is_dir():
        keep = {p.name for p in written}
        for old in plots_dir.glob("*.png"):
            if old.name not in keep:
                old.unlink()
    text = render_markdown(results, _header(doc), links, errors, source)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")
    return [*written, doc]
