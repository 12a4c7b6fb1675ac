"""Who may change what the server serves: the repository control API (load, unload), as Triton gates it.

Triton's ``--model-control-mode`` defaults to ``none``: the models in the repository at start are served,
and load/unload requests are refused. squishy does the same; ``explicit`` turns the API on, and an
optional bearer token then guards it (``Authorization: Bearer <token>`` over HTTP, the ``authorization``
metadata key over gRPC). Inference, health, metadata, statistics and the repository index stay open:
they change nothing. There is no TLS here: it belongs to the proxy or mesh in front of the server.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

from squishy.runtime.api import ForbiddenError, UnauthenticatedError

ModelControl = Literal["none", "explicit"]
MODEL_CONTROL_MODES: tuple[ModelControl, ...] = ("none", "explicit")
TOKEN_ENVIRONMENT = "SQUISHY_CONTROL_TOKEN"


@dataclass(frozen=True)
class RepositoryControl:
    mode: ModelControl = "none"
    token: str | None = None  # with mode explicit: load/unload need it as a bearer token

    def __post_init__(self) -> None:
        if self.mode not in MODEL_CONTROL_MODES:
            raise ValueError(f"model control must be one of {', '.join(MODEL_CONTROL_MODES)}, got {self.mode!r}")
        if self.token is not None and not self.token:
            raise ValueError("the control token must not be empty")

    def check(self, authorization: str | None) -> None:
        """Raise unless a load/unload carrying this ``Authorization`` value may go ahead."""
        if self.mode == "none":
            raise ForbiddenError(
                "repository control is off: this server serves the models it started with "
                "(start it with --model-control explicit to allow load and unload)"
            )
        if self.token is None:
            return
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise UnauthenticatedError("repository control needs 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(credential.strip().encode(), self.token.encode()):
            raise UnauthenticatedError("repository control: the bearer token is not valid")
