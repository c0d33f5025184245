"""deploy/bench/capacity.py (`make capacity`) end to end on small numbers, against an empty
redis-server of the suite's (tests/support/processes.py): its tables have their shape, an
active user holds one user hash, one session hash, one session index and one predict
counter, and the GCRA counter keeps its size whatever the count while the sliding-window
log it replaced grows with it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from service.infra import keys
from tests.support.processes import RedisProcess

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "deploy" / "bench" / "capacity.py"
BEFORE_REV = "3c3046a"  # the tool's default: the last sliding-window log gate
POPULATION_HEADER = [
    "key kind",
    "keys / active user",
    "bytes / active user",
    "keys / extra live session",
    "bytes / extra live session",
]
# requests per rate: a small log (a listpack), then two past Redis's 128-entry listpack limit
REQUESTS = (10, 200, 600)


@pytest.fixture(scope="module")
def capacity() -> ModuleType:
    """The tool as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("capacity_under_test", TOOL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def empty_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()


def _tables(markdown: str) -> list[list[list[str]]]:
    """Each markdown table's rows (separator row dropped), as cells without bold marks."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.replace("**", "").strip() for c in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-:") for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


def test_capacity_tables_and_counter_growth(
    empty_redis: RedisProcess, model_dir: Path, tmp_path: Path
) -> None:
    history = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE_REV}^{{commit}}"],
        capture_output=True, check=False,
    )  # fmt: skip
    if history.returncode != 0:
        pytest.skip(f"no commit {BEFORE_REV} (a shallow clone): the old gate script is in it")
    out = tmp_path / "capacity.json"
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    }
    rates = ",".join(["10/minute:10", *(f"100000/hour:{count}" for count in REQUESTS[1:])])
    done = subprocess.run(
        [sys.executable, str(TOOL), "--redis-url", empty_redis.url, "--users", "12",
         "--predictions", "2", "--concurrency", "4", "--rates", rates, "--budget", "600",
         "--model-dir", str(model_dir), "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    population, limiter, per_user = _tables(done.stdout)
    assert population[0] == POPULATION_HEADER
    assert all(len(row) == len(POPULATION_HEADER) for row in population)
    rows = {row[0]: row for row in population[1:]}
    # keys per active user, keys per extra live session
    for kind, count, extra in (
        ("user hash", 1, 0),
        ("session hash", 1, 1),
        ("session index", 1, 0),
        ("rate counter: predict (per user)", 1, 0),
        ("users set (one shared key)", 0, 0),
        ("rate counter: login (per address+username) (transient)", 1, 0),
    ):
        assert (_number(rows[kind][1]), _number(rows[kind][3])) == (count, extra), kind
        assert _number(rows[kind][2]) > 0, kind
    # A second session: one more session hash of the first one's size, and one more member
    # in the session index; nothing else. (A session hash is hashtable-encoded, its
    # User-Agent being over 64 bytes; its MEMORY USAGE was seen to differ by 32 bytes from
    # one run to another, never within one: the tolerance.)
    assert abs(_number(rows["session hash"][4]) - _number(rows["session hash"][2])) <= 32
    assert _number(rows["session index"][4]) > 0
    assert _number(rows["total, lasting keys (MEMORY USAGE)"][1]) == 4
    assert _number(rows["total, lasting keys (MEMORY USAGE)"][3]) == 1
    assert "other" not in rows  # every key the service wrote has a kind
    assert _number(rows["INFO used_memory delta"][2]) > 0
    assert [len(limiter) - 1, len(per_user) - 1] == [len(REQUESTS), len(REQUESTS)]
    assert [_number(row[1]) for row in limiter[1:]] == list(REQUESTS)

    report = json.loads(out.read_text())
    assert report["population"]["users"] == 12
    assert report["population"]["active_user"]["keys"]["user hash"] == 1
    points = report["limiter"]
    assert [p["requests"] for p in points] == list(REQUESTS)
    for point in points:
        assert point["before"]["admitted"] == point["after"]["admitted"] == point["requests"]
        assert point["before"]["entries"] == point["requests"]  # one entry per request
        assert point["after"]["entries"] == 1
    assert [p["before"]["encoding"] for p in points] == ["listpack", "skiplist", "skiplist"]
    log = [p["before"]["bytes"] for p in points]
    gcra = [p["after"]["bytes"] for p in points]
    assert log[0] < log[1] < log[2], log
    assert log[2] > 2.5 * log[1], log  # past the listpack: linear in the count
    assert len(set(gcra)) == 1, gcra  # the same string whatever the rate and the count
    assert gcra[0] < log[0]
    # The last table: the GCRA user's bytes are the same on every row, the log's grow.
    with_log = [_number(row[4]) for row in per_user[1:]]
    with_gcra = [_number(row[5]) for row in per_user[1:]]
    assert len(set(with_gcra)) == 1
    assert with_log == sorted(with_log)
    assert with_log[0] > with_gcra[0]


# --- Pure parts: classification, aggregation, arguments ------------------------------------


def test_classify_every_key_kind(capacity: ModuleType) -> None:
    kinds = capacity._kinds()
    user, client = keys.user_tag("alice"), keys.client_tag("127.0.0.1:alice")
    expected = {
        keys.user_key("alice"): "user hash",
        keys.USERS_SET: "users set (one shared key)",
        keys.session_key("alice", "Zx9_-abc"): "session hash",
        keys.sessions_key("alice"): "session index",
        keys.rate_key("predict", user): "rate counter: predict (per user)",
        keys.rate_key("login-user", keys.user_tag("alice")): "rate counters: other per-user",
        keys.rate_key("login", client): "rate counter: login (per address+username)",
        keys.rate_key("login-ip", keys.client_tag("::1")): "rate counters: other per-address",
        keys.ADMIN_CHANGE_LOCK: capacity.OTHER,
        keys.legacy_user_key("alice"): capacity.OTHER,
        "sma:something-new": capacity.OTHER,
    }
    assert {key: capacity.classify(kinds, key) for key in expected} == expected
    # One kind's pattern never swallows another's: a session id holds no ':'.
    assert capacity.classify(kinds, keys.user_key("a:s:b")) == "user hash"


def test_per_unit_divides_differences_by_kind(capacity: ModuleType) -> None:
    before = capacity.Snapshot(used_memory=1_000, keys={"user hash": 1}, bytes={"user hash": 500})
    after = capacity.Snapshot(
        used_memory=9_000,
        keys={"user hash": 5, "session hash": 4},
        bytes={"user hash": 2_500, "session hash": 2_400},
    )
    unit = capacity.per_unit(before, after, 4)
    assert unit.keys == {"session hash": 1, "user hash": 1}
    assert unit.bytes == {"session hash": 600, "user hash": 500}
    assert unit.used_memory == 2_000


def test_population_table_totals_lasting_and_transient(capacity: ModuleType) -> None:
    kinds = capacity._kinds()
    login = "rate counter: login (per address+username)"
    active = capacity.PerUnit(
        keys={"user hash": 1, "session hash": 1, login: 1},
        bytes={"user hash": 500, "session hash": 600, login: 100},
        used_memory=1_500,
    )
    extra = capacity.PerUnit(keys={"session hash": 1}, bytes={"session hash": 600}, used_memory=700)
    population = capacity.Population(
        users=10, predictions=1, predict_rate="1000/day", active_user=active,
        extra_session=extra, seconds=1.0,
    )  # fmt: skip
    (table,) = _tables(capacity.population_table(population, kinds))
    rows = {row[0]: row[1:] for row in table[1:]}
    assert list(rows) == [
        "user hash",
        "session hash",
        f"{login} (transient)",
        "total, lasting keys (MEMORY USAGE)",
        "total, all keys (MEMORY USAGE)",
        "INFO used_memory delta",
    ]
    assert rows["total, lasting keys (MEMORY USAGE)"] == ["2.00", "1,100", "1.00", "600"]
    assert rows["total, all keys (MEMORY USAGE)"] == ["3.00", "1,200", "1.00", "600"]
    assert rows["INFO used_memory delta"] == ["", "1,500", "", "700"]


def test_parse_rates(capacity: ModuleType) -> None:
    assert capacity.parse_rates("60/minute:60, 100000/hour:1000") == [
        ("60/minute", 60),
        ("100000/hour", 1000),
    ]
    for bad in ("60/minute:61", "60/minute:0", "60/fortnight:1", "60/minute", "100001/day:1"):
        with pytest.raises(ValueError, match="--rates"):
            capacity.parse_rates(bad)


def test_before_gate_from_a_file_or_git(
    capacity: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "gate.lua"
    log.write_text('redis.call("ZADD", key, now, ARGV[6])\n')
    assert "ZADD" in capacity.before_gate("no-such-rev", log)
    # Today's script is no sliding-window log: refused, whatever the source.
    gcra = tmp_path / "gcra.lua"
    gcra.write_text(capacity.after_gate())
    with pytest.raises(SystemExit, match="no sliding-window log"):
        capacity.before_gate(BEFORE_REV, gcra)
    with pytest.raises(SystemExit, match="--before-gate"):
        capacity.before_gate(BEFORE_REV, tmp_path / "missing.lua")
    # Without the history (an unknown revision) or without git: a message naming the way out.
    with pytest.raises(SystemExit, match="pass it as --before-gate FILE"):
        capacity.before_gate("0000000", None)
    monkeypatch.setattr(capacity.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match=r"git not found.*--before-gate FILE"):
        capacity.before_gate(BEFORE_REV, None)
