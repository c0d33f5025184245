"""The report of a run: the issue's targets checked against it, the tables, the chart, and
reports/bench.{json,md,png}.

Pure formatting of the `Result`s the wrk runs produced; every ratio is taken between numbers
of the same run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scenarios import BATCH, CEILING, PREDICT, V2_INFER, Result


@dataclass
class Check:
    name: str
    measured: float | None
    threshold: float
    unit: str
    higher_is_better: bool

    @property
    def status(self) -> str:
        if self.measured is None:
            return "not measured"
        ok = (
            self.measured >= self.threshold
            if self.higher_is_better
            else self.measured <= self.threshold
        )
        return "PASS" if ok else "MISSED"


def find(results: list[Result], target: str, scenario: str, connections: int) -> Result | None:
    for result in results:
        if (result.target, result.scenario, result.connections) == (
            target,
            scenario,
            connections,
        ):
            return result
    return None


def checks(results: list[Result]) -> list[Check]:
    """The issue's targets, each from numbers of this run."""

    def value(target: str, scenario: str, conns: int, attr: str) -> float | None:
        found = find(results, target, scenario, conns)
        return None if found is None else float(getattr(found, attr))

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    out = [
        Check("POST /predict @64: req/s", value("direct", PREDICT, 64, "rps"), 3000, "req/s", True),
        Check(
            "POST /predict @64: share of ceiling",
            ratio(value("direct", PREDICT, 64, "rps"), value("direct", CEILING, 64, "rps")),
            0.25, "ratio", True,
        ),
        Check("POST /predict @64: p99", value("direct", PREDICT, 64, "p99_ms"), 50, "ms", False),
        Check("POST /predict @16: p99", value("direct", PREDICT, 16, "p99_ms"), 15, "ms", False),
    ]  # fmt: skip
    for conns in (16, 64):
        for pct in ("p50", "p99"):
            out.append(
                Check(
                    f"batch-64 {pct} / predict {pct} @{conns}",
                    ratio(
                        value("direct", BATCH, conns, f"{pct}_ms"),
                        value("direct", PREDICT, conns, f"{pct}_ms"),
                    ),
                    2.0, "x", False,
                )
            )  # fmt: skip
    for conns in (64, 16):
        out.append(
            Check(
                f"V2 infer / POST /predict req/s @{conns}",
                ratio(
                    value("direct", V2_INFER, conns, "rps"), value("direct", PREDICT, conns, "rps")
                ),
                0.85, "ratio", True,
            )
        )  # fmt: skip
    for conns in (64, 16):
        out.append(
            Check(
                f"POST /predict @{conns}: nginx / direct req/s",
                ratio(
                    value("nginx", PREDICT, conns, "rps"), value("direct", PREDICT, conns, "rps")
                ),
                0.70, "ratio", True,
            )
        )  # fmt: skip
    return out


def fmt_check(check: Check) -> tuple[str, str, str]:
    def show(value: float) -> str:
        if check.unit == "ratio":
            return f"{value:.0%}"
        if check.unit == "x":
            return f"{value:.2f}x"
        if check.unit == "req/s":
            return f"{value:,.0f} req/s"
        return f"{value:.1f} {check.unit}"

    op = ">=" if check.higher_is_better else "<="
    measured = "-" if check.measured is None else show(check.measured)
    return measured, f"{op} {show(check.threshold)}", check.status


def table_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        ceiling = find(results, r.target, CEILING, r.connections)
        direct = find(results, "direct", r.scenario, r.connections)
        rows.append(
            [
                r.scenario,
                r.target,
                str(r.connections),
                f"{r.rps:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.rps / ceiling.rps:.0%}" if ceiling else "-",
                f"{r.rps / direct.rps:.0%}" if direct and r.target != "direct" else "-",
                f"{r.cpu_us_per_req.get('workers', 0):.0f}",
            ]
        )
    return rows


HEADERS = ["scenario", "via", "conns", "req/s", "p50 ms", "p99 ms", "of ceiling",
           "of direct", "worker CPU µs/req"]  # fmt: skip


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


def chart(results: list[Result], path: Path, title: str) -> None:
    """Grouped bars of req/s and p99 per scenario and connection count, direct vs nginx."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r.scenario, r.connections) for r in results))
    targets = list(dict.fromkeys(r.target for r in results))
    labels = [
        s.replace(" (64)", "\n(64 rows)").replace("ceiling ", "ceiling\n") + f"\nc={c}"
        for s, c in keys
    ]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    width = 0.8 / max(1, len(targets))
    colours = {"direct": "#4C72B0", "nginx": "#DD8452"}
    for metric, ax, unit in (("rps", axes[0], "req/s"), ("p99_ms", axes[1], "p99 latency (ms)")):
        for index, target in enumerate(targets):
            values = []
            for scenario, conns in keys:
                found = find(results, target, scenario, conns)
                values.append(float(getattr(found, metric)) if found else 0.0)
            xs = [i + (index - (len(targets) - 1) / 2) * width for i in range(len(keys))]
            bars = ax.bar(xs, values, width, label=target, color=colours.get(target))
            ax.bar_label(bars, fmt="{:,.0f}" if metric == "rps" else "{:.1f}", fontsize=7)
        ax.set_xticks(range(len(keys)), labels, fontsize=7)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    axes[0].axhline(3000, color="green", linestyle="--", linewidth=0.8)
    axes[0].set_title("throughput (dashed: 3,000 req/s target for POST /predict @64)")
    axes[1].set_title("p99 latency (targets: 15 ms @16, 50 ms @64 for POST /predict)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: list[Result], args: argparse.Namespace, meta: dict[str, Any]) -> bool:
    """Print and write the table, targets and chart; return whether any request failed."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(results)
    target_rows = [[c.name, *fmt_check(c)] for c in checks(results)]
    print()
    print(text_table(HEADERS, rows))
    print()
    print(text_table(["target", "measured", "wanted", "status"], target_rows))
    missed = [r[0] for r in target_rows if r[3] == "MISSED"]
    if missed:
        print(f"\nMISSED {len(missed)} target(s): " + "; ".join(missed))
    failed = [r for r in results if sum(r.errors.values())]
    for r in failed:
        print(f"\nFAILED REQUESTS in {r.target} {r.scenario} c={r.connections}: {r.errors}")

    stamp = meta["finished_at"]
    title = (
        f"make bench {stamp} ({meta['cpus']} CPUs, load {meta['loadavg_before']}, "
        f"{args.duration}s per run, commit {meta['commit']})"
    )
    data = {
        "meta": meta,
        "results": [asdict(r) for r in results],
        "checks": [asdict(c) | {"status": c.status} for c in checks(results)],
    }
    (out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    md = [
        f"<!-- generated by `make bench` (deploy/bench/bench.py) on {stamp} -->",
        f"`make bench`, {stamp}: {meta['cpus']} CPUs shared with wrk, load average "
        f"{meta['loadavg_before']} before the run, {args.duration} s per wrk run "
        f"({args.threads} threads), direct: gunicorn with {args.workers} uvicorn workers; "
        f"nginx: `make cluster`'s 3 instances, workers sized to the cores; "
        f"commit {meta['commit']}.",
        "",
        md_table(HEADERS, rows),
        "",
        md_table(["target", "measured", "wanted", "status"], target_rows),
        "",
        "![make bench](bench.png)",
    ]
    (out / "bench.md").write_text("\n".join(md) + "\n")
    chart(results, out / "bench.png", title)
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return bool(failed)
