"""The report of a run: the goals checked against it, the tables, the chart, and
reports/bench.{json,md,png}.

Pure formatting of the `Result`s the wrk runs produced. Every goal is a ratio between two
numbers of the same round (taken seconds apart, see wrk.py); a goal is marked on its worst
round (the lowest of a ratio that should be high, the highest of one that should be low):
PASS when even the worst round meets it, MISSED otherwise, "not measured" when a number it
needs was not taken (e.g. MLServer without `--peers mlserver`, or a connection count left
out).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scenarios import BATCH, CEILING, MLSERVER, PREDICT, V2_INFER, Result

AGGREGATE = "worst"  # of the rounds: what a goal is marked on


@dataclass
class Goal:
    name: str
    per_round: list[float | None]
    threshold: float
    unit: str  # "share" (shown in %) or "x" (a multiple)
    higher_is_better: bool
    why_not: str = ""  # why it was not measured

    @property
    def worst(self) -> float | None:
        values = [v for v in self.per_round if v is not None]
        if not values:
            return None
        return min(values) if self.higher_is_better else max(values)

    @property
    def status(self) -> str:
        worst = self.worst
        if worst is None:
            return "not measured"
        ok = worst >= self.threshold if self.higher_is_better else worst <= self.threshold
        return "PASS" if ok else "MISSED"


def find(
    results: list[Result], target: str, scenario: str, connections: int, round_: int = 1
) -> Result | None:
    for result in results:
        if (result.target, result.scenario, result.connections, result.round) == (
            target,
            scenario,
            connections,
            round_,
        ):
            return result
    return None


def rounds_of(results: list[Result]) -> list[int]:
    return sorted({r.round for r in results}) or [1]


Pick = tuple[str, str, int]  # target, scenario, connections


def _per_round(results: list[Result], measure: Callable[[int], float | None]) -> list[float | None]:
    return [measure(round_) for round_ in rounds_of(results)]


def goals(results: list[Result], unavailable: dict[str, str] | None = None) -> list[Goal]:
    """Issue 15's goals, each a ratio of two numbers of one round; `unavailable`: the peers
    asked for that could not be installed, and why."""

    def ratio(a: Pick, b: Pick, attr: str = "rps", attr_b: str | None = None) -> list[float | None]:
        def one(round_: int) -> float | None:
            x, y = find(results, *a, round_), find(results, *b, round_)
            if x is None or y is None:
                return None
            denominator = float(getattr(y, attr_b or attr))
            return float(getattr(x, attr)) / denominator if denominator else None

        return _per_round(results, one)

    predict64, predict16 = ("direct", PREDICT, 64), ("direct", PREDICT, 16)
    ceiling64 = ("ceiling", CEILING, 64)
    mlserver_ran = any(r.target == "mlserver" for r in results)
    mlserver_why = (unavailable or {}).get(
        "mlserver", "MLServer not run (make bench PEERS=mlserver)"
    )
    out = [
        Goal("POST /predict @64 / ceiling (req/s)", ratio(predict64, ceiling64), 0.40,
             "share", True),
        Goal("V2 infer @64 / ceiling (req/s)", ratio(("direct", V2_INFER, 64), ceiling64), 0.30,
             "share", True),
        Goal("POST /predict @64 / MLServer V2 infer @64 (req/s)",
             ratio(predict64, ("mlserver", MLSERVER, 64)), 4.0, "x", True,
             "" if mlserver_ran else mlserver_why),
    ]  # fmt: skip
    for pick in (predict64, predict16):
        out.append(
            Goal(f"POST /predict @{pick[2]}: p99 / p50", ratio(pick, pick, "p99_ms", "p50_ms"),
                 2.5, "x", False)
        )  # fmt: skip
    nginx_ran = any(r.target == "nginx" for r in results)
    for conns in (64, 16):
        out.append(
            Goal(f"nginx (3 instances) / direct POST /predict @{conns} (req/s)",
                 ratio(("nginx", PREDICT, conns), ("direct", PREDICT, conns)), 0.75, "share",
                 True, "" if nginx_ran else "nginx not run (--no-cluster)")
        )  # fmt: skip
    if any(r.target == "baseline" for r in results):
        for scenario in (PREDICT, BATCH):
            for conns in (64, 16):
                out.append(
                    Goal(f"{scenario} @{conns} / the baseline revision's (req/s)",
                         ratio(("direct", scenario, conns), ("baseline", scenario, conns)),
                         0.95, "share", True)
                )  # fmt: skip
    for conns in (64, 16):
        for pct in ("p50", "p99"):
            out.append(
                Goal(f"batch of 64 rows / one row @{conns}: {pct} latency",
                     ratio(("direct", BATCH, conns), ("direct", PREDICT, conns), f"{pct}_ms"),
                     2.0, "x", False)
            )  # fmt: skip
    return out


def _show(value: float, unit: str, digits: int = 0) -> str:
    return f"{value:.{digits}%}" if unit == "share" else f"{value:.{digits + 2}f}x"


def _show_against(value: float, threshold: float, unit: str) -> str:
    """`value` with the digits that keep it from reading as `threshold` when it is not (a
    MISSED 2.004x is shown as 2.004x, not 2.00x)."""
    digits = 0
    while (
        digits < 4
        and value != threshold
        and _show(value, unit, digits) == _show(threshold, unit, digits)
    ):
        digits += 1
    return _show(value, unit, digits)


def goal_rows(found: list[Goal]) -> tuple[list[str], list[list[str]]]:
    rounds = max((len(g.per_round) for g in found), default=1)
    headers = ["goal", *(f"round {i}" for i in range(1, rounds + 1)), AGGREGATE, "wanted",
               "status"]  # fmt: skip
    rows = []
    for goal in found:
        per = [
            "-" if v is None else _show_against(v, goal.threshold, goal.unit)
            for v in goal.per_round
        ]
        worst = goal.worst
        op = ">=" if goal.higher_is_better else "<="
        status = goal.status + (f" ({goal.why_not})" if goal.why_not and worst is None else "")
        shown = "-" if worst is None else _show_against(worst, goal.threshold, goal.unit)
        rows.append([goal.name, *per, shown, f"{op} {_show(goal.threshold, goal.unit)}", status])
    return headers, rows


HEADERS = ["round", "via", "scenario", "conns", "req/s", "p50 ms", "p99 ms", "p99/p50",
           "of ceiling", "worker CPU µs/req", "Redis CPU µs/req"]  # fmt: skip


def table_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        ceiling = find(results, "ceiling", CEILING, r.connections, r.round)
        rows.append(
            [
                str(r.round),
                r.target,
                r.scenario,
                str(r.connections),
                f"{r.rps:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.p99_ms / r.p50_ms:.2f}" if r.p50_ms else "-",
                f"{r.rps / ceiling.rps:.0%}" if ceiling and ceiling.rps else "-",
                f"{r.cpu_us_per_req.get('workers', 0):.0f}",
                f"{r.redis.cpu_us_per_req:.1f}" if r.redis is not None else "-",
            ]
        )
    return rows


REDIS_HEADERS = ["round", "via", "scenario", "conns", "Redis CPU µs/req", "EVALSHA µs/call",
                 "EVALSHA/req", "commands/req", "per primary: CPU µs/req (share of EVALSHA)"]  # fmt: skip  # noqa: E501


def redis_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        use = r.redis
        if use is None or use.evalsha_calls_per_req == 0:
            continue  # e.g. /healthz: no Redis call
        per = " · ".join(
            f"{name} {p.cpu_us_per_req:.1f} ({p.evalsha_share:.0%})"
            for name, p in use.primaries.items()
        )
        rows.append(
            [
                str(r.round),
                r.target,
                r.scenario,
                str(r.connections),
                f"{use.cpu_us_per_req:.1f}",
                "-" if use.evalsha_us_per_call is None else f"{use.evalsha_us_per_call:.1f}",
                f"{use.evalsha_calls_per_req:.2f}",
                f"{use.commands_per_req:.2f}",
                per,
            ]
        )
    return rows


@dataclass
class Capacity:
    """How far one Redis core carries the API tier, from the direct POST /predict run at the
    highest connection count of one round."""

    round: int
    connections: int
    redis_us_per_req: float  # all primaries together
    busiest_primary_us_per_req: float
    gated_rps_per_redis_core: float  # 1e6 / redis_us_per_req
    topology_gated_rps: float  # until the busiest primary saturates its core
    workers: int  # of the direct deployment, one core each
    api_instance_rps: float  # this run's direct deployment
    instances_per_redis_core: float  # by req/s in this run
    api_worker_us_per_req: float
    # An instance with a core per worker: workers * 1e6 / worker µs per request.
    instances_per_redis_core_by_cpu: float
    primaries: dict[str, float] = field(default_factory=dict)  # share of EVALSHA calls


def capacity(results: list[Result], workers: int = 2) -> list[Capacity]:
    out = []
    for round_ in rounds_of(results):
        runs = [
            r for r in results if (r.target, r.scenario, r.round) == ("direct", PREDICT, round_)
        ]
        if not runs:
            continue
        run = max(runs, key=lambda r: r.connections)
        use = run.redis
        if use is None or use.cpu_us_per_req <= 0:
            continue
        per_core = 1e6 / use.cpu_us_per_req
        busiest = max((p.cpu_us_per_req for p in use.primaries.values()), default=0.0)
        worker_us = run.cpu_us_per_req.get("workers", 0.0)
        out.append(
            Capacity(
                round=round_,
                connections=run.connections,
                redis_us_per_req=use.cpu_us_per_req,
                busiest_primary_us_per_req=busiest,
                gated_rps_per_redis_core=round(per_core),
                topology_gated_rps=round(1e6 / busiest) if busiest > 0 else 0.0,
                workers=workers,
                api_instance_rps=round(run.rps),
                instances_per_redis_core=round(per_core / run.rps, 1) if run.rps else 0.0,
                api_worker_us_per_req=worker_us,
                instances_per_redis_core_by_cpu=(
                    round(per_core / (workers * 1e6 / worker_us), 1) if worker_us > 0 else 0.0
                ),
                primaries={n: p.evalsha_share for n, p in use.primaries.items()},
            )
        )
    return out


def capacity_lines(found: list[Capacity], mode: str) -> list[str]:
    lines = []
    for c in found:
        by_cpu = c.workers * 1e6 / c.api_worker_us_per_req if c.api_worker_us_per_req else 0
        lines.append(
            f"round {c.round} (direct POST /predict @{c.connections}, Redis {mode}): "
            f"{c.redis_us_per_req:.1f} µs of Redis CPU per gated request → "
            f"{c.gated_rps_per_redis_core:,.0f} gated req/s per Redis core; one API instance "
            f"({c.workers} workers) did {c.api_instance_rps:,.0f} req/s here, so one Redis core "
            f"carries {c.instances_per_redis_core:.1f} such instances (by API CPU, "
            f"{c.api_worker_us_per_req:.0f} µs per request, i.e. {by_cpu:,.0f} req/s on "
            f"{c.workers} cores of its own: {c.instances_per_redis_core_by_cpu:.1f})."
        )
        if len(c.primaries) > 1:
            split = ", ".join(f"{n} {s:.0%}" for n, s in c.primaries.items())
            lines.append(
                f"  split of EVALSHA calls over the primaries: {split}; the busiest primary "
                f"spends {c.busiest_primary_us_per_req:.1f} µs per request of the whole "
                f"load, so the topology saturates at ~{c.topology_gated_rps:,.0f} gated req/s."
            )
    return lines


def capacity_summary(found: list[Capacity], mode: str) -> str | None:
    """One line: Redis CPU per gated request, gated req/s per Redis core and API instances
    per Redis core, from the round that cost Redis the most per request (the worst)."""
    if not found:
        return None
    c = max(found, key=lambda c: c.redis_us_per_req)
    rounds = f"round {c.round} of {len(found)}, the costliest" if len(found) > 1 else "1 round"
    return (
        f"CAPACITY (Redis {mode}, {rounds}): {c.redis_us_per_req:.1f} µs Redis CPU per gated "
        f"request | {c.gated_rps_per_redis_core:,.0f} gated req/s per Redis core | "
        f"{c.instances_per_redis_core:.1f} API instances ({c.workers} workers, "
        f"{c.api_instance_rps:,.0f} req/s each) per Redis core "
        f"({c.instances_per_redis_core_by_cpu:.1f} by API CPU)"
    )


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


COLOURS = {"ceiling": "#55A868", "direct": "#4C72B0", "nginx": "#DD8452", "mlserver": "#8172B3"}


def chart(results: list[Result], path: Path, title: str) -> None:
    """Bars of req/s and p99 per run (the median of the rounds; whiskers: min to max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r.target, r.scenario, r.connections) for r in results))
    labels = [
        f"{t}\n{s.replace(' (64)', ' 64 rows').replace(' (', chr(10) + '(')}\nc={c}"
        for t, s, c in keys
    ]
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 1.1 * len(keys)), 9))
    for metric, ax, unit in (("rps", axes[0], "req/s"), ("p99_ms", axes[1], "p99 latency (ms)")):
        medians, lows, highs = [], [], []
        for key in keys:
            values = [float(getattr(r, metric)) for r in results
                      if (r.target, r.scenario, r.connections) == key]  # fmt: skip
            middle = statistics.median(values)
            medians.append(middle)
            lows.append(middle - min(values))
            highs.append(max(values) - middle)
        bars = ax.bar(range(len(keys)), medians, yerr=[lows, highs], capsize=3,
                      color=[COLOURS.get(t, "#999999") for t, _, _ in keys])  # fmt: skip
        ax.bar_label(bars, fmt="{:,.0f}" if metric == "rps" else "{:.1f}", fontsize=7)
        ax.set_xticks(range(len(keys)), labels, fontsize=6)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("throughput (median of the rounds; whiskers: min-max)")
    axes[1].set_title("p99 latency")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: list[Result], args: argparse.Namespace, meta: dict[str, Any]) -> bool:
    """Print and write the tables, goals and chart; return whether any request failed."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(results)
    found = goals(results, meta.get("peers_unavailable"))
    goal_headers, goal_table = goal_rows(found)
    redis_table = redis_rows(results)
    mode = meta.get("redis_mode", "standalone")
    capacities = capacity(results, args.workers)
    capacity_text = capacity_lines(capacities, mode)
    summary = capacity_summary(capacities, mode)
    unavailable: dict[str, str] = meta.get("peers_unavailable") or {}
    print()
    print(text_table(HEADERS, rows))
    if redis_table:
        print(
            f"\nRedis ({meta.get('redis_mode')}), from INFO on every primary before/after each run"
        )
        print(text_table(REDIS_HEADERS, redis_table))
    if capacity_text:
        print("\ncapacity:\n" + "\n".join(capacity_text))
    if summary:
        print("\n" + summary)
    print(f"\ngoals (each a ratio within one round; marked on the {AGGREGATE} round):")
    print(text_table(goal_headers, goal_table))
    missed = [g.name for g in found if g.status == "MISSED"]
    if missed:
        print(f"\nMISSED {len(missed)} goal(s): " + "; ".join(missed))
    for peer, why in unavailable.items():
        print(f"\nPEER UNAVAILABLE: {peer}: {why}; its goal is not measured in this run.")
    failed = [r for r in results if sum(r.errors.values())]
    for r in failed:
        print(
            f"\nFAILED REQUESTS in round {r.round} {r.target} {r.scenario} "
            f"c={r.connections}: {r.errors}"
        )

    stamp = meta["finished_at"]
    title = (
        f"make bench {stamp} ({meta['cpus']} CPUs, load {meta['loadavg_before']}, "
        f"{args.duration}s per run, {meta['rounds']} round(s), Redis {meta['redis_mode']}, "
        f"commit {meta['commit']})"
    )
    data = {
        "meta": meta,
        "results": [asdict(r) for r in results],
        "goals": [
            asdict(g) | {"worst": g.worst, "status": g.status, "aggregate": AGGREGATE}
            for g in found
        ],
        "capacity": [asdict(c) for c in capacities],
        "capacity_summary": summary,
    }
    (out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    md = [
        f"<!-- generated by `make bench` (deploy/bench/bench.py) on {stamp} -->",
        f"`make bench`, {stamp}: {meta['cpus']} CPUs shared with wrk, load average "
        f"{meta['loadavg_before']} before the run, {meta['rounds']} interleaved round(s) of "
        f"{args.duration} s wrk runs ({args.threads} threads); ceiling: bare FastAPI, gunicorn "
        f"with {args.workers} UvicornWorkers; direct: the service, gunicorn with {args.workers} "
        f"uvicorn workers, every protection on, {meta['bench_users']} bench user(s); nginx: "
        f"`make cluster`'s 3 instances, workers sized to the cores; Redis "
        f"{meta['redis_mode']}; peers: {', '.join(meta['peers']) or 'none'}; "
        f"commit {meta['commit']}.",
        "",
        f"Goals: each a ratio of two numbers of the same round, marked on the {AGGREGATE} round.",
        "",
        md_table(goal_headers, goal_table),
        "",
        md_table(HEADERS, rows),
        "",
    ]
    if redis_table:
        md += [
            f"Redis ({meta['redis_mode']}), from `INFO` on every primary before and after each "
            "run:",
            "",
            md_table(REDIS_HEADERS, redis_table),
            "",
        ]
    if capacity_text:
        md += ["Capacity:", "", *(f"- {line.strip()}" for line in capacity_text), ""]
    if summary:
        md += [summary, ""]
    md += [f"Peer unavailable: {peer}: {why}." for peer, why in unavailable.items()]
    md.append("![make bench](bench.png)")
    (out / "bench.md").write_text("\n".join(md) + "\n")
    chart(results, out / "bench.png", title)
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return bool(failed)
