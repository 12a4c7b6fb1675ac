"""Errors users see. Each carries one line that names the problem, so the CLI never prints a traceback."""


class SquishyError(Exception):
    """Base class for errors squishy reports to users."""


class ProfileError(SquishyError, ValueError):
    """A profile file or profile value is malformed or cannot serve a request."""


class WorkloadError(SquishyError, ValueError):
    """A workload (sessions, queries, settings) is malformed or cannot be planned."""


class InfeasibleError(WorkloadError):
    """No plan can meet a session's SLO with the profiles given."""


class ArrivalsError(WorkloadError):
    """An arrival process or rate schedule is malformed (unknown kind, bad CV, unreadable trace file).

    A ``WorkloadError``, so the simulator's callers report it as they report any bad workload setting;
    ``squishy bench`` prints it as it prints its own ``BenchError``: one line, no traceback."""
