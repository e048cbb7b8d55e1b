"""Figures recorded while optimising the tunnel: what changed, before and after.

The "before" figures cannot be re-measured by a later run (the code they describe is
gone), so they are kept here as bench/tunnel.py measured them, each pair in one run with
both versions side by side (`Harness(extra_brokers=...)` starts a second broker from
another checkout), the paths taking turns, medians of the rounds shown.
"""

from __future__ import annotations

from bench.common import Table

OPTIMISATIONS = Table(
    title="Optimisations (before -> after, measured side by side in one run)",
    columns=["change", "figure", "before", "after"],
    rows=[
        ["broker/tunnel.py: the relay reads the VNC server through its own asyncio "
         "protocol (DesktopStream), handing the event loop's bytes to the websocket, "
         "instead of asyncio.StreamReader, which copies every byte in and out of its buffer",
         "server->browser, 1 tunnel: MB/s; proxy core-s per GB", "1628; 0.51", "1874; 0.39"],
        ["(same change)", "server->browser, 10 tunnels: proxy core-s per GB", "0.57", "0.54"],
        ["vdi/cli.py: uvicorn's websocket implementation named (websockets-sansio) instead "
         "of 'auto'; the alternatives measured",
         "browser->server, 1 tunnel: MB/s; proxy core-s per GB",
         "wsproto 536; 1.85 / websockets (legacy) 1017; 0.90", "websockets-sansio 1170; 0.76"],
        ["broker/rfb.py: a chunk that is exactly one fixed-size message (noVNC sends each "
         "KeyEvent / PointerEvent alone) skips the general parser; broker/tunnel.py: input "
         "reported to the activity registry at most once a second",
         "KeyEvent round trip: p50 us; proxy CPU us per round trip", "117; 60", "110; 55"],
        ["tried and reverted: coalescing the relay's writes to the VNC server per event-loop "
         "turn (one writelines instead of one write per websocket message)",
         "browser->server, 10 tunnels: MB/s; KeyEvent round trip proxy CPU us",
         "1118; 68", "1025; 98"],
        ["checked, no change: TCP_NODELAY", "set on both of the broker's sockets",
         "uvloop sets it", "-"],
        ["bench only: the fake desktop consumes browser->server bytes in a protocol instead "
         "of a StreamReader (it was the bottleneck with 10 tunnels)",
         "browser->server, 10 tunnels: raw relay MB/s; broker MB/s", "1248; 997",
         "1755; 1351"],
    ],
    note=("2-core VM (the benchmark's machine). Each before/after pair comes from one run "
          "with both versions side by side, so a change of the machine's load hits both; "
          "throughput is still only good to about 10-20 % between runs on this shared VM. "
          "The DesktopStream rows: 5 rounds of 1 s; websocket implementations: 3 rounds of "
          "1.5 s; parser/input: 6 x 2000 round trips; coalescing: 4 rounds of 1.5 s. The "
          "bench-only row compares two runs a few minutes apart, not one."),
)
