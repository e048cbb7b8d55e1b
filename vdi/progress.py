"""A progress bar for the `vdi` commands (an image import, local or through the API)."""

from __future__ import annotations

from typing import TextIO


class ProgressBar:
    """One line on a terminal (`stage [####    ]  45%`), redrawn as work goes on; one
    line per stage when the output is not a terminal."""

    WIDTH = 30

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._last: tuple[str, int] | None = None

    def show(self, stage: str, percent: float) -> None:
        pct = max(0, min(100, int(percent)))
        if self._last == (stage, pct):
            return
        label = stage.replace("upload:", "upload to ")
        if self._tty:
            filled = self.WIDTH * pct // 100
            self._out.write(f"\r{label:<24} [{'#' * filled}{' ' * (self.WIDTH - filled)}] "
                            f"{pct:3d}%")
        elif self._last is None or self._last[0] != stage or pct == 100:
            self._out.write(f"{label}: {pct}%\n")
        self._out.flush()
        self._last = (stage, pct)

    def close(self) -> None:
        if self._tty and self._last is not None:
            self._out.write("\n")
            self._out.flush()
