"""The audit archive in PostgreSQL, the hash chains, and crash safety, as a dispute tests them.

Real parts only: redis-server, a PostgreSQL server of the tests' own (``tests.postgres``), the
gateway over gRPC, and the commands as processes. The erasure, forged-id, flood and SIGKILL
cases are the ones reproduced against the trail before it had an archive, a chain or a spool.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import orjson
import psycopg
import pytest
import redis

from gateway.audit.record import Chain
from gateway.config import Settings
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.conftest import Loader, RedisProcess, free_port
from tests.exports import DOCTOR, HOSPITAL, institution_row, line, load_into, request, staff_row
from tests.faultload import GatewayProcess
from tests.polling import until
from tests.postgres import PostgresServer, postgres_server

BIN = Path(sys.executable).parent
SUSPENDED = "D330902000002"
UNSEEN = "D330902000009"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def dsn(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database with the archive schema, made by the migration command (twice: it is
    idempotent)."""
    url = postgres.new_database(f"t_{request.node.name[:40].lower()}")
    for _ in range(2):
        run("audit", "migrate", "--dsn", url)
    return url


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "settlement-gateway"), *args], capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("SGW_")},
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def archive(redis_url: str, dsn: str) -> None:
    run("audit-archive", "--once", "--redis-url", redis_url, "--dsn", dsn, "--consumer", "test")


def archived(dsn: str, *args: str) -> list[dict[str, Any]]:
    out = run("audit", "--json", "--dsn", dsn, *args).stdout
    return [orjson.loads(text) for text in out.splitlines()]


def verify(dsn: str) -> tuple[int, list[dict[str, Any]]]:
    proc = run("audit", "verify", "--json", "--dsn", dsn, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, [orjson.loads(text) for text in proc.stdout.splitlines()]


@pytest.fixture
async def archived_gateway(settings: Settings, dsn: str, load: Loader) -> AsyncIterator[GatewayApp]:
    """A gateway told an archive exists (so it does not trim), with a tiny stream cap that an
    untrimmed stream must ignore."""
    load("institution", [institution_row()])
    load("staff", [staff_row(), staff_row(SUSPENDED, status="中止", start="2026-01-01")])
    app = GatewayApp(replace(settings, audit_dsn=dsn, audit_max_entries=100), settings.redis_url or "")
    await app.start()
    yield app
    await app.stop(0.5)


async def validate(app: GatewayApp, *bills: pb.ValidateRequest) -> list[pb.ValidateResponse]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        return [await stub.Validate(bill) for bill in bills]


def bill(settlement_id: str, *lines: pb.SettlementLine) -> pb.ValidateRequest:
    req = request(*lines, request_id=f"rq-{settlement_id}")
    req.settlement_id = settlement_id
    return req


def stream_length(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen(Keys().audit))
    finally:
        client.close()


async def test_the_archive_keeps_each_record_once_and_empties_the_stream(
    archived_gateway: GatewayApp, redis_url: str, dsn: str
) -> None:
    app = archived_gateway
    assert app.audit is not None
    [reply] = await validate(app, bill("MDTRT-A", line("1", DOCTOR), line("2", SUSPENDED), line("3", "")))
    await until(lambda: app.audit.written == 2)  # type: ignore[union-attr]
    archive(redis_url, dsn)
    assert stream_length(redis_url) == 0  # archived, acknowledged, then removed
    archive(redis_url, dsn)  # nothing new: nothing changes
    found = archived(dsn, "--settlement", "MDTRT-A")
    assert [(r["line_id"], r["verdict"], r["reason"]) for r in found] == [
        ("2", "REJECT", "STAFF_SUSPENDED"), ("3", "REJECT", "STAFF_CODE_MISSING"),
    ]  # fmt: skip
    assert found[0]["detail"] == reply.verdicts[1].detail and found[0]["data_version"] == reply.data_version
    assert archived(dsn, "--staff", SUSPENDED) == found[:1]
    assert len(archived(dsn, "--institution", HOSPITAL, "--since", "2000-01-01")) == 2
    assert archived(dsn, "--until", "2001-01-01") == []
    assert verify(dsn) == (0, [])

    # Delivered again (a replayed spool, an archiver that died before XACK): stored once.
    client = redis.Redis.from_url(redis_url)
    with psycopg.connect(dsn) as conn:
        raws = [bytes(r[0]) for r in conn.execute("SELECT raw FROM audit_record ORDER BY seq")]
    for raw in raws:
        client.xadd(Keys().audit, {"r": raw})
    client.close()
    archive(redis_url, dsn)
    assert len(archived(dsn, "--settlement", "MDTRT-A")) == 2


async def test_a_flood_of_junk_bills_cannot_push_a_dispute_out(
    archived_gateway: GatewayApp, redis_url: str, dsn: str
) -> None:
    """Reproduced: junk bills evicted a real rejection from the capped stream. With an archive
    the gateway does not trim (its cap here is 100 entries) and the archive keeps everything."""
    app = archived_gateway
    assert app.audit is not None
    await validate(app, bill("MDTRT-DISPUTE", line("1", SUSPENDED)))
    junk = [bill(f"JUNK-{n}", *[line(str(i), "X" + str(i)) for i in range(300)]) for n in range(3)]
    await validate(app, *junk)
    await until(lambda: app.audit.written == 901, timeout=30)  # type: ignore[union-attr]
    assert stream_length(redis_url) == 901  # nothing evicted while it waits for the archiver
    # What the alert rules watch: the stream's length and the age of its oldest record.
    await until(lambda: app.metrics.audit_stream_entries._value.get() == 901, timeout=20)
    assert app.metrics.audit_archive_lag._value.get() >= 0
    archive(redis_url, dsn)
    [dispute] = archived(dsn, "--settlement", "MDTRT-DISPUTE")
    assert dispute["reason"] == "STAFF_SUSPENDED"


async def test_a_forged_stream_id_hides_nothing(
    archived_gateway: GatewayApp, redis_url: str, dsn: str
) -> None:
    """Reproduced: one entry with id 9999999999999-0 made every later record's id follow it,
    and a time-range query (which trusted ids) found nothing."""
    app = archived_gateway
    assert app.audit is not None
    client = redis.Redis.from_url(redis_url)
    client.xadd(Keys().audit, {"x": "y"}, id="9999999999999-0")
    client.close()
    await validate(app, bill("MDTRT-F", line("1", SUSPENDED)))
    await until(lambda: app.audit.written == 1)  # type: ignore[union-attr]
    stream = run(
        "audit", "--json", "--redis-url", redis_url, "--since", "2000-01-01", "--until", "2099-12-31"
    )
    assert [orjson.loads(t)["settlement_id"] for t in stream.stdout.splitlines()] == ["MDTRT-F"]
    archive(redis_url, dsn)
    assert [r["settlement_id"] for r in archived(dsn, "--since", "2000-01-01", "--until", "2099-12-31")] == [
        "MDTRT-F"
    ]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT stream_id, fields FROM audit_unreadable").fetchall() == [
            ("9999999999999-0", {"x": "y"})
        ]  # set aside as it came, not lost and not blocking the archive


async def test_verify_reports_records_erased_from_the_stream(
    archived_gateway: GatewayApp, redis_url: str, dsn: str
) -> None:
    """Reproduced: ``XADD {sgw}:audit MAXLEN 0 * x y`` with the gateway's own user emptied the
    stream. The chain shows the hole: which instance, which sequence numbers, when."""
    app = archived_gateway
    assert app.audit is not None
    await validate(app, *[bill(f"MDTRT-{i}", line("1", SUSPENDED)) for i in range(3)])
    await until(lambda: app.audit.written == 3)  # type: ignore[union-attr]
    archive(redis_url, dsn)
    await validate(app, *[bill(f"MDTRT-{i}", line("1", SUSPENDED)) for i in range(3, 6)])
    await until(lambda: app.audit.written == 6)  # type: ignore[union-attr]
    client = redis.Redis.from_url(redis_url)
    client.execute_command("XADD", Keys().audit, "MAXLEN", "0", "*", "x", "y")
    client.close()
    await validate(app, bill("MDTRT-6", line("1", SUSPENDED)))
    await until(lambda: app.audit.written == 7)  # type: ignore[union-attr]
    archive(redis_url, dsn)
    status, problems = verify(dsn)
    assert status == 1
    assert [(p["problem"], p["instance"], p["first_seq"], p["last_seq"]) for p in problems] == [
        ("missing", app.audit.instance, 4, 6)
    ]
    assert problems[0]["time"]  # when the gap ends: the next record's time


async def test_verify_reports_an_altered_record(
    archived_gateway: GatewayApp, redis_url: str, dsn: str
) -> None:
    app = archived_gateway
    assert app.audit is not None
    await validate(app, *[bill(f"MDTRT-{i}", line("1", SUSPENDED)) for i in range(3)])
    await until(lambda: app.audit.written == 3)  # type: ignore[union-attr]
    archive(redis_url, dsn)
    with psycopg.connect(dsn) as conn:
        # Rewritten with a hash to match, as someone covering their tracks would: the next
        # record's link still names the original.
        [(raw,)] = conn.execute("SELECT raw FROM audit_record WHERE seq = 2").fetchall()
        forged = bytes(raw).replace(b'"REJECT"', b'"ACCEPT_EMERGENCY"')
        conn.execute(
            "UPDATE audit_record SET raw = %s, hash = encode(sha256(%s), 'hex') WHERE seq = 2",
            (forged, forged),
        )
    status, problems = verify(dsn)
    assert status == 1
    assert [(p["problem"], p["first_seq"]) for p in problems] == [("broken-link", 3)]
    explained = orjson.loads(
        run("audit", "explain", "--json", "--settlement", "MDTRT-1", "--dsn", dsn).stdout
    )
    assert explained["lines"][0]["chain"]["status"] == "broken"
    ok = orjson.loads(run("audit", "explain", "--json", "--settlement", "MDTRT-0", "--dsn", dsn).stdout)
    assert ok["lines"][0]["chain"]["status"] == "verified"


async def test_explain_shows_the_decision_its_periods_and_its_files(
    archived_gateway: GatewayApp, redis_url: str, dsn: str
) -> None:
    app = archived_gateway
    assert app.audit is not None
    [reply] = await validate(app, bill("MDTRT-X", line("1", SUSPENDED), line("2", SUSPENDED, emergency=True)))
    await until(lambda: app.audit.written == 2)  # type: ignore[union-attr]
    archive(redis_url, dsn)
    out = run("audit", "explain", "--json", "--settlement", "MDTRT-X", "--dsn", dsn).stdout
    doc = orjson.loads(out)
    first, second = doc["lines"]
    assert (first["verdict"], first["rule"], first["detail"]) == (
        "REJECT", reply.verdicts[0].rule, reply.verdicts[0].detail,
    )  # fmt: skip
    assert second["verdict"] == "ACCEPT_EMERGENCY" and second["emergency_basis"] == ["line"]
    assert first["periods"]["staff"] == ["SUSPENDED 2026-01-01..长期"]
    assert first["data_version"] == reply.data_version
    files = {f["kind"]: f for f in first["data_files"]}
    assert set(files) == {"institution", "staff"}
    assert Path(files["staff"]["name"]).name.startswith("staff") and len(files["staff"]["sha256"]) == 64
    assert first["chain"]["status"] == "verified" and second["chain"]["status"] == "verified-before"
    text = run("audit", "explain", "--settlement", "MDTRT-X", "--dsn", dsn).stdout
    assert reply.verdicts[0].detail in text and files["staff"]["sha256"] in text
    # Without the archive, from the stream (nothing archived yet there: a new bill).
    await validate(app, bill("MDTRT-Y", line("1", SUSPENDED)))
    await until(lambda: app.audit.written == 3)  # type: ignore[union-attr]
    streamed = orjson.loads(
        run("audit", "explain", "--json", "--settlement", "MDTRT-Y", "--redis-url", redis_url).stdout
    )
    assert (
        streamed["lines"][0]["data_files"][0]["sha256"]
        == files[streamed["lines"][0]["data_files"][0]["kind"]]["sha256"]
    )


# -- crash safety: the spool ---------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisProcess]:
    from gateway.embedded import find_redis_server

    server = RedisProcess(find_redis_server(), free_port(), tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


async def test_audited_answers_survive_sigkill_while_redis_is_frozen(
    store: RedisProcess, tmp_path: Path, dsn: str
) -> None:
    """Reproduced: Redis frozen, 20 rejections answered, gateway killed: 11 of 20 reached the
    stream. Now each answer is in the spool before its reply; the restarted gateway replays it."""
    load_into(store.url, tmp_path, "institution", [institution_row()])
    load_into(
        store.url,
        tmp_path,
        "staff",
        [staff_row(DOCTOR), staff_row(SUSPENDED, status="中止", start="2026-01-01")],
    )
    env = {
        "SGW_REDIS_URL": store.url, "SGW_STATE_DIR": str(tmp_path / "state"), "SGW_AUDIT_DSN": dsn,
        "SGW_OUTAGE_POLICY": "accept-flagged", "SGW_REDIS_TIMEOUT": "0.2",
    }  # fmt: skip
    first = GatewayProcess(env, tmp_path)
    first.start(free_port(), free_port())
    target = f"127.0.0.1:{first.port}"
    answered = 0
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.SettlementGatewayStub(channel)
            await stub.Validate(bill("WARM", line("1", SUSPENDED)))  # cached, audited, written
            await asyncio.sleep(1.0)
            assert store.proc is not None
            os.kill(store.proc.pid, signal.SIGSTOP)
            attempt = 0
            while answered < 20:
                attempt += 1
                assert attempt < 400, "no degraded answers from the cache"
                try:
                    reply = await stub.Validate(bill(f"FROZEN-{attempt}", line("1", SUSPENDED)), timeout=5)
                except grpc.aio.AioRpcError:
                    continue
                assert reply.verdicts[0].verdict == pb.REJECT  # from the lease, then degraded
                answered += 1
        first.signal(signal.SIGKILL)
        first.wait()
        second = GatewayProcess(env, tmp_path)
        started = threading.Thread(target=second.start, args=(free_port(), free_port()))
        started.start()  # it connects to the frozen Redis, retrying
        await asyncio.sleep(1.0)
        os.kill(store.proc.pid, signal.SIGCONT)
        started.join(60)
        try:

            def frozen_ones() -> int:
                archive(store.url, dsn)
                with psycopg.connect(dsn) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM audit_record WHERE settlement_id LIKE 'FROZEN-%'"
                    ).fetchone()
                    return int(row[0]) if row else 0

            await until(lambda: frozen_ones() == answered, timeout=60)
            await asyncio.sleep(1.0)
            assert frozen_ones() == answered  # all, and each once
            with psycopg.connect(dsn) as conn:
                ids = conn.execute(
                    "SELECT count(DISTINCT settlement_id) FROM audit_record WHERE settlement_id LIKE 'FROZEN-%'"
                ).fetchone()
            assert ids == (answered,)
            assert verify(dsn) == (0, [])
        finally:
            second.stop()
    finally:
        if store.proc is not None and store.proc.poll() is None:
            os.kill(store.proc.pid, signal.SIGCONT)
        first.stop()


# -- Redis permissions: the gateway appends, the archiver takes --------------------------------

ACL_TEMPLATE = Path(__file__).parents[2] / "deploy" / "redis" / "users.acl.template"


def test_the_gateway_user_cannot_trim_and_the_archiver_user_archives(tmp_path: Path, dsn: str) -> None:
    from gateway.embedded import find_redis_server

    passwords = {"GATEWAY": "gw-secret", "LOADER": "ld-secret", "ARCHIVER": "ar-secret"}
    rendered = subprocess.run(
        [str(ACL_TEMPLATE.with_name("render-acl"))],
        env={f"SGW_{k}_REDIS_PASSWORD": v for k, v in passwords.items()} | {"PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "user sgw-audit-archiver on #" in rendered and "#@" not in rendered
    (tmp_path / "users.acl").write_text(rendered, encoding="utf-8")
    port = free_port()
    url = f"redis://{{}}:{{}}@127.0.0.1:{port}/0"
    server = RedisProcess(
        find_redis_server(), port, tmp_path, ("--aclfile", str(tmp_path / "users.acl")),
        ready_url=url.format("sgw-gateway", "gw-secret"),
    )  # fmt: skip
    server.start()
    try:
        gateway = redis.Redis.from_url(url.format("sgw-gateway", "gw-secret"))
        key = Keys().audit
        from gateway.audit.record import Chain

        chain = Chain("acl-test")
        for i in range(3):
            gateway.xadd(
                key, {"r": chain.seal({"time": "2026-11-24T04:00:00.000Z", "settlement_id": f"S{i}"})}
            )
        for command in (("XTRIM", key, "MAXLEN", "0"), ("XDEL", key, "0-1"), ("DEL", key)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                gateway.execute_command(*command)
        gateway.close()

        archiver_url = url.format("sgw-audit-archiver", "ar-secret")
        run("audit-archive", "--once", "--redis-url", archiver_url, "--dsn", dsn)
        assert [r["settlement_id"] for r in archived(dsn, "--since", "2000-01-01")] == ["S0", "S1", "S2"]
        archiver = redis.Redis.from_url(archiver_url)
        assert archiver.xlen(key) == 0  # it deleted what it stored
        for command in (("XADD", key, "*", "x", "y"), ("GET", "{sgw}:live"), ("DEL", key)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                archiver.execute_command(*command)
        archiver.close()
    finally:
        server.stop()


def test_an_insert_and_select_only_role_archives_and_reads(
    postgres: PostgresServer, redis_url: str, dsn: str
) -> None:
    """The grants docs/audit.md gives: the archiver can store and read, never rewrite."""
    dbname = dsn.rsplit("dbname=", 1)[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS sgw_archiver_test")
        conn.execute("CREATE ROLE sgw_archiver_test LOGIN")
        conn.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO sgw_archiver_test')
        conn.execute("GRANT USAGE ON SCHEMA public TO sgw_archiver_test")
        conn.execute(
            "GRANT SELECT, INSERT ON audit_record, audit_version, audit_unreadable TO sgw_archiver_test"
        )
    limited = postgres.dsn(dbname, user="sgw_archiver_test")
    client = redis.Redis.from_url(redis_url)
    client.xadd(
        Keys().audit,
        {"r": Chain("grant-test").seal({"time": "2026-11-24T04:00:00.000Z", "settlement_id": "G"})},
    )
    client.close()
    archive(redis_url, limited)
    assert [r["settlement_id"] for r in archived(limited, "--settlement", "G")] == ["G"]
    assert verify(limited) == (0, [])
    with psycopg.connect(limited) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE audit_record SET verdict = 'ACCEPT'")


def test_the_archiver_runs_until_sigterm_and_serves_its_metrics(redis_url: str, dsn: str) -> None:
    import time
    import urllib.request

    from tests.scrape import parse

    client = redis.Redis.from_url(redis_url)
    chain = Chain("running-archiver")
    for i in range(5):
        client.xadd(
            Keys().audit, {"r": chain.seal({"time": "2026-11-24T04:00:00.000Z", "settlement_id": f"R{i}"})}
        )
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "settlement-gateway"), "audit-archive", "--redis-url", redis_url, "--dsn", dsn,
         "--metrics-listen", f"127.0.0.1:{port}"],
        env={k: v for k, v in os.environ.items() if not k.startswith("SGW_")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
                    scraped = parse(response.read().decode())
                if scraped.value("sgw_audit_archived_records_total") == 5 and scraped.value(
                    "sgw_audit_archive_last_success_timestamp_seconds"
                ):
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the archiver did not archive"
            time.sleep(0.2)
        assert scraped.value("sgw_audit_stream_entries") == 0
        assert int(client.xlen(Keys().audit)) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
    assert len(archived(dsn, "--since", "2000-01-01")) == 5
