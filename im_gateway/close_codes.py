"""The WebSocket close codes the gateway sends, each named once (the client library reads
them from here too: this module imports nothing).

RFC 6455 (section 7.4.1) codes, and one of the application's own (4000-4999)::

    code  name                    when
    1000  CLOSE_IDLE              the client sent nothing for --idle-timeout
    1001  CLOSE_GOING_AWAY        the gateway shuts down
    1008  CLOSE_POLICY            more than --max-refused refused frames in a minute
    1009  CLOSE_TOO_BIG           a frame over --max-frame-size (websockets sends it itself)
    1011  CLOSE_INTERNAL          an internal error, a late pong, a gateway not ready yet
    1012  CLOSE_SERVICE_RESTART   the gateway is draining (SIGTERM): reconnect, to any gateway
    1013  CLOSE_SEND_QUEUE_FULL   the client stopped reading and its --send-queue filled
    4001  CLOSE_DISCONNECTED      the backend disconnected the user (server API disconnect)
"""

from __future__ import annotations

from typing import Final

CLOSE_IDLE: Final = 1000
"""Normal Closure: the client was silent for ``--idle-timeout``."""
CLOSE_GOING_AWAY: Final = 1001
"""Going Away: the gateway shuts down."""
CLOSE_POLICY: Final = 1008
"""Policy Violation: the client kept sending frames that were refused."""
CLOSE_TOO_BIG: Final = 1009
"""Message Too Big: a client frame over ``--max-frame-size`` (websockets closes with it)."""
CLOSE_INTERNAL: Final = 1011
"""Internal Error: the gateway failed, the client's pong came too late, or the gateway is
not ready to take connections."""
CLOSE_SERVICE_RESTART: Final = 1012
"""Service Restart: the gateway is draining; reconnect at once, to any gateway (the
client library does)."""
CLOSE_SEND_QUEUE_FULL: Final = 1013
"""Try Again Later: the client stopped reading and its send queue filled up."""
CLOSE_DISCONNECTED: Final = 4001
"""The application's backend disconnected the user (the server API's ``disconnect``)."""
