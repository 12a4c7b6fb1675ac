"""What the REST and gRPC fuzz tests share: datatypes to draw, parameters never to send, hypothesis settings."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from squishy.runtime.api import DATATYPES as SERVED_DATATYPES

# Every OIP datatype: the ones squishy serves, and BF16, which it must refuse cleanly.
DATATYPES = [*SERVED_DATATYPES, "BF16"]
# Custom request parameters the test service acts on (``fail`` raises, ``delay_ms`` sleeps): never generated.
RESERVED_PARAMS = {"fail", "delay_ms"}

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    database=None,
)
