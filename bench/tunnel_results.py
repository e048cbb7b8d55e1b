"""Figures recorded while optimising the tunnel: what changed, before and after.

The "before" figures cannot be re-measured by a later run (the code they describe is
gone), so they are kept here as measured by bench/tunnel.py on the machine named in the
table's note.
"""

from __future__ import annotations

from bench.common import Table

OPTIMISATIONS = Table(
    title="Optimisations (before -> after, same benchmark, same machine)",
    columns=["change", "figure", "before", "after"],
    rows=[],
    note="",
)
