"""uvicorn's httptools protocol, stamping each request with the time its first bytes were read, and
letting the app shed an infer request before it becomes an ASGI task.

The ASGI app starts a request's handler only once the event loop gets to it; under load that is long
after the bytes arrived. ``data_received`` runs before parsing, so the time taken there is the earliest
this process can observe. The stamp travels in the ASGI scope as ``squishy.received_s`` (seconds on
``time.monotonic``, the serving clock's base), set when the parser begins a message.

A rejection must cost much less than serving, or shedding saves nothing: an ASGI task, its
request-response cycle and the handler's dispatch cost most of what serving a trivial model does. So
once the headers are parsed, the app's ``shed_early(method, url, received_s, scope)`` may answer with a
complete response (the door's 503), written at once; the body that follows is skipped by the parser,
and the connection stays open for the client's next request. Pipelined requests behind one still in
flight take the normal path, so replies keep their order.
"""

from __future__ import annotations

import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

RECEIVED_KEY = "squishy.received_s"
ADMITTED_KEY = "squishy.admitted"  # set when the door admitted the request before its ASGI task began
CLOSE = b"\r\nconnection: close\r\n\r\n"


class _Answered:
    """Stands in for the request-response cycle of a request already answered: the parser's callbacks
    for the rest of its body see a complete response and drop the bytes."""

    response_complete = True
    disconnected = False


class StampingHttpToolsProtocol(HttpToolsProtocol):
    _received_s = 0.0

    def data_received(self, data: bytes) -> None:
        # Pipelined requests in one read share its stamp: it is the time their bytes were read.
        self._received_s = time.monotonic()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[RECEIVED_KEY] = self._received_s  # type: ignore[literal-required]

    def on_headers_complete(self) -> None:
        shed_early = getattr(self.app, "shed_early", None)
        idle = (self.cycle is None or self.cycle.response_complete) and not self.pipeline
        if shed_early is not None and idle and not self.parser.should_upgrade():
            reply = shed_early(self.parser.get_method(), self.url, self._received_s, self.scope)
            if reply is not None:
                keep_alive = self.parser.should_keep_alive()
                self.transport.write(reply if keep_alive else reply.replace(b"\r\n\r\n", CLOSE, 1))
                self.cycle = _Answered()  # type: ignore[assignment]
                if not keep_alive:
                    self.transport.close()
                return
        super().on_headers_complete()
