"""The one error the benchmark tools raise for a run that cannot go ahead (the CLI prints it as one line)."""

from squishy.errors import SquishyError


class BenchError(SquishyError):
    """A benchmark that cannot run: bad settings, server unreachable, unknown model, unusable inputs."""
