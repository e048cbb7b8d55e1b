"""Starts websockify (from PyPI) for the tunnel benchmark, with or without numpy.

websockify imports numpy in `websockify/websocket.py` inside a try/except ImportError and,
when that fails, unmasks client frames byte by byte in Python instead of with
`numpy.bitwise_xor`. With `--no-numpy` this launcher puts None in `sys.modules["numpy"]`
before websockify is imported, so `import numpy` raises ImportError exactly as in an
environment without numpy; the forked per-connection handlers inherit the same module
table. It then checks which path websockify took and prints it ("numpy=<version>" or
"numpy=none") before handing over to websockify's own command line, so the benchmark
can refuse a run in which the "without numpy" proxy secretly had numpy.

Run as `python -m bench.tunnel_websockify [--no-numpy] -- <websockify arguments>`.
"""

from __future__ import annotations

import sys
import warnings


def main(argv: list[str]) -> int:
    no_numpy = "--no-numpy" in argv[: argv.index("--")] if "--" in argv else False
    websockify_args = argv[argv.index("--") + 1:] if "--" in argv else argv
    if no_numpy:
        sys.modules["numpy"] = None  # type: ignore[assignment]  # import numpy -> ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # websockify warns when numpy is missing
        import websockify.websocket as ws_module  # type: ignore[import-untyped]
        from websockify.websocketproxy import websockify_init  # type: ignore[import-untyped]
    numpy_module = ws_module.numpy
    if no_numpy and numpy_module is not None:
        print("numpy=unexpected", flush=True)
        return 3
    print(f"numpy={numpy_module.__version__ if numpy_module is not None else 'none'}",
          flush=True)
    sys.argv = ["websockify", *websockify_args]
    websockify_init()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
