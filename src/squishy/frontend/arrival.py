"""uvicorn's httptools protocol, stamping each request with the time its first bytes were read.

The ASGI app starts a request's handler only once the event loop gets to it; under load that is long
after the bytes arrived. ``data_received`` runs before parsing, so the time taken there is the earliest
this process can observe. The stamp travels in the ASGI scope as ``squishy.received_s`` (seconds on
``time.monotonic``, the serving clock's base), set when the parser begins a message.
"""

from __future__ import annotations

import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

RECEIVED_KEY = "squishy.received_s"


class StampingHttpToolsProtocol(HttpToolsProtocol):
    _received_s = 0.0

    def data_received(self, data: bytes) -> None:
        # Pipelined requests in one read share its stamp: it is the time their bytes were read.
        self._received_s = time.monotonic()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[RECEIVED_KEY] = self._received_s  # type: ignore[literal-required]
