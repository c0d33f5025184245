"""Redis's own account of a wrk run: `INFO cpu commandstats stats` on every primary before and
after it, and what the difference costs per request.

- CPU: `used_cpu_user + used_cpu_sys` of the redis-server process (everything it did: the
  scripts, the network, the replication stream to its replica), per request of the run;
- EVALSHA: `cmdstat_evalsha` calls and usec (the time Redis spent inside the gate script,
  the one Redis call of a prediction), so µs per call and calls per request;
- the share of the run's EVALSHA calls each primary took (on a Redis Cluster, whether the
  per-user keys spread the load over the primaries).

Reading INFO is itself a command on each primary: two per run, nothing against the tens of
thousands a run makes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RedisSample:
    """One primary's counters at one moment."""

    cpu_s: float  # used_cpu_user + used_cpu_sys
    evalsha_calls: int
    evalsha_usec: int
    # total_commands_processed: the redis.call()s a script makes count too (Redis 7.0), so
    # one EVALSHA whose script makes 5 calls counts 6.
    commands: int

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> RedisSample:
        """From redis-py's parsed INFO (sections cpu, commandstats, stats); a server that
        has not run EVALSHA yet has no `cmdstat_evalsha` line."""
        evalsha = info.get("cmdstat_evalsha") or {}
        return cls(
            cpu_s=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            evalsha_calls=int(evalsha.get("calls", 0)),
            evalsha_usec=int(evalsha.get("usec", 0)),
            commands=int(info.get("total_commands_processed", 0)),
        )


@dataclass(frozen=True)
class PrimaryUse:
    """What one primary spent on a run."""

    cpu_us_per_req: float  # this primary's CPU / all requests of the run
    evalsha_calls: int
    evalsha_share: float  # of the run's EVALSHA calls, over all primaries
    evalsha_us_per_call: float | None


@dataclass(frozen=True)
class RedisUse:
    """What Redis (every primary) spent on a run of `requests` requests."""

    cpu_us_per_req: float  # all primaries together
    evalsha_us_per_call: float | None
    evalsha_calls_per_req: float
    commands_per_req: float
    primaries: dict[str, PrimaryUse] = field(default_factory=dict)


def usage(
    before: Mapping[str, RedisSample], after: Mapping[str, RedisSample], requests: int
) -> RedisUse:
    """The difference between two sets of samples (by primary name), per request."""
    requests = max(1, requests)
    deltas = {
        name: (
            after[name].cpu_s - before[name].cpu_s,
            after[name].evalsha_calls - before[name].evalsha_calls,
            after[name].evalsha_usec - before[name].evalsha_usec,
            after[name].commands - before[name].commands,
        )
        for name in before
        if name in after
    }
    calls = sum(d[1] for d in deltas.values())
    usec = sum(d[2] for d in deltas.values())
    primaries = {
        name: PrimaryUse(
            cpu_us_per_req=round(cpu * 1e6 / requests, 2),
            evalsha_calls=n,
            evalsha_share=round(n / calls, 4) if calls else 0.0,
            evalsha_us_per_call=round(us / n, 2) if n else None,
        )
        for name, (cpu, n, us, _) in deltas.items()
    }
    return RedisUse(
        cpu_us_per_req=round(sum(d[0] for d in deltas.values()) * 1e6 / requests, 2),
        evalsha_us_per_call=round(usec / calls, 2) if calls else None,
        evalsha_calls_per_req=round(calls / requests, 3),
        commands_per_req=round(sum(d[3] for d in deltas.values()) / requests, 3),
        primaries=primaries,
    )


# A primary's name and a function that returns its parsed INFO.
InfoReader = Callable[[], Mapping[str, Any]]


@dataclass
class RedisProbe:
    """Reads every primary of a topology (names and readers fixed when the run starts: the
    bench makes no failover)."""

    readers: dict[str, InfoReader]

    def sample(self) -> dict[str, RedisSample]:
        return {name: RedisSample.from_info(read()) for name, read in self.readers.items()}
