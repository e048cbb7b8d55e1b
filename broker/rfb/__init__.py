"""Sans-I/O RFB (VNC, RFC 6143) core for the websocket console tunnel.

The broker sits between the browser (noVNC) and QEMU's VNC server:

* towards QEMU it is an RFB *client* and answers VNC authentication (security type 2)
  itself, with the per-connection password it set through libvirt (`ServerHandshake`);
* towards the browser it is an RFB *server* that offers only security type 1, "None"
  (`BrowserHandshake`), so the browser never sees the VNC password;
* after both handshakes the shell relays bytes, feeding the browser->server stream
  through `ClientStreamParser` to timestamp real user input and to bound lengths;
* `ClientFilter` says what of that stream reaches the server: all of it for the clerk,
  only display requests for the helpdesk's read-only view (input is dropped here).

Nothing here does I/O, reads a clock or logs: every class takes bytes and returns bytes
or events. Everything read from a peer is treated as hostile; each length is bounded
before anything is buffered. Exception messages never contain the password and are safe
to log.

The package: `common` (limits, errors, VNC authentication, shared parsing), `handshake`
(the QEMU-facing and browser-facing handshakes), `stream` (the browser's messages),
`filters` (what of them is forwarded).
"""

from broker.rfb.common import (
    CLIENT_INIT_TYPE,
    MAX_REASON_LENGTH,
    RfbAuthFailed,
    RfbProtocolError,
    vnc_auth_response,
)
from broker.rfb.filters import DISPLAY_REQUESTS, ClientFilter
from broker.rfb.handshake import BrowserHandshake, ServerHandshake
from broker.rfb.stream import ClientMessage, ClientStreamParser, InputKind

__all__ = [
    "CLIENT_INIT_TYPE",
    "DISPLAY_REQUESTS",
    "MAX_REASON_LENGTH",
    "BrowserHandshake",
    "ClientFilter",
    "ClientMessage",
    "ClientStreamParser",
    "InputKind",
    "RfbAuthFailed",
    "RfbProtocolError",
    "ServerHandshake",
    "vnc_auth_response",
]
