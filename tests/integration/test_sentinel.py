"""Redis Sentinel: a real primary, a replica and three Sentinels on loopback ports.

The primary is failed over (``SENTINEL FAILOVER``, and ``kill -9``) under steady load and
during a publish. Asserted: no wrong answer; no publish reported done that the new primary
lacks (a publish cut by the failover fails with a clear message, and the re-run loads it);
degraded answers only from the moment the primary was lost until the gateway's first live
answer after the Sentinels named the new one.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import redis
import trustme

from gateway.config import mask_url
from gateway.embedded import find_redis_server
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.redis_client import SentinelTarget, async_client, sync_client
from tests import exports
from tests.conftest import RedisProcess, free_port
from tests.faultload import (
    BIN,
    GatewayProcess,
    Load,
    bills,
    load_population,
    staff_codes,
    truth,
    wrong_answers,
)

SERVICE = "sgw-primary"
STAFF = 300
OK = grpc.StatusCode.OK
BREAKER_RESET = 1.0


# -- URL parsing -----------------------------------------------------------------------------


def test_a_sentinel_url_names_sentinels_service_db_and_credentials() -> None:
    target = SentinelTarget.parse(
        "redis+sentinel://gw:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/sgw-primary/2"
        "?socket_keepalive=true&sentinel_password=sent"
    )
    assert target is not None
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert target.service == "sgw-primary"
    assert target.redis_kwargs == {"username": "gw", "password": "s3cret", "db": 2, "socket_keepalive": True}
    assert target.sentinel_kwargs == {"password": "sent"}


def test_rediss_sentinel_uses_tls_to_sentinels_and_servers() -> None:
    target = SentinelTarget.parse("rediss+sentinel://h:26379/svc?ssl_ca_certs=/etc/ca.pem")
    assert target is not None
    assert target.redis_kwargs == {"ssl": True, "ssl_ca_certs": "/etc/ca.pem"}
    assert target.sentinel_kwargs == {"ssl": True, "ssl_ca_certs": "/etc/ca.pem"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:26379", "names its service"),
        ("redis+sentinel://h:26379/svc/0/extra", "names its service"),
        ("redis+sentinel:///svc", "at least one host"),
        ("redis+sentinel://h:notaport/svc", "bad port"),
    ],
)
def test_a_malformed_sentinel_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SentinelTarget.parse(url)


def test_other_urls_are_not_sentinel_urls() -> None:
    assert SentinelTarget.parse("redis://127.0.0.1:6379/0") is None
    assert SentinelTarget.parse("redis+cluster://127.0.0.1:7000") is None


# -- a primary, a replica, three Sentinels ---------------------------------------------------


@dataclass
class SentinelProcess:
    binary: str
    port: int
    workdir: Path
    primary_port: int
    proc: subprocess.Popen[bytes] | None = None
    # TLS: configuration lines, and the keyword arguments of a client that may connect.
    tls_conf: str = ""
    tls_client: dict[str, object] = field(default_factory=dict)

    def start(self) -> None:
        conf = self.workdir / f"sentinel-{self.port}.conf"
        listen = f"port 0\ntls-port {self.port}\n{self.tls_conf}" if self.tls_conf else f"port {self.port}\n"
        conf.write_text(
            f"{listen}bind 127.0.0.1\ndir {self.workdir}\n"
            f"logfile {self.workdir / f'sentinel-{self.port}.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.proc = subprocess.Popen([self.binary, str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        until(lambda: _ping(self.port, **self.tls_client), "Sentinel did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _ping(port: int, **tls: Any) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, **tls)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def until(predicate: object, message: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


@dataclass
class SentinelGroup:
    servers: dict[int, RedisProcess]
    sentinels: list[SentinelProcess]
    started_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{SERVICE}"

    def primary_port(self) -> int | None:
        """The primary every Sentinel names, when they agree."""
        named = set()
        for sentinel in self.sentinels:
            client = redis.Redis(host="127.0.0.1", port=sentinel.port, socket_timeout=0.5)
            try:
                addr = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                named.add(int(addr[1]) if addr else None)
            except redis.RedisError:
                named.add(None)
            finally:
                client.close()
        return named.pop() if len(named) == 1 else None

    def role(self, port: int) -> str:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
        try:
            return str(client.execute_command("ROLE")[0].decode())
        except redis.RedisError:
            return "down"
        finally:
            client.close()

    def replicas_see(self, replica: int) -> bool:
        """Every Sentinel knows ``replica`` as a replica in sync (so it can promote it)."""
        for sentinel in self.sentinels:
            client = redis.Redis(
                host="127.0.0.1", port=sentinel.port, socket_timeout=0.5, decode_responses=True
            )
            try:
                known = client.execute_command("SENTINEL", "REPLICAS", SERVICE)
            except redis.RedisError:
                return False
            finally:
                client.close()
            found = [r for r in known if int(r["port"]) == replica]
            if not found or "s_down" in found[0]["flags"] or found[0].get("master-link-status") != "ok":
                return False
        return True

    def failover(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.sentinels[0].port, socket_timeout=5)
        try:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        finally:
            client.close()


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    binary = find_redis_server()
    primary = RedisProcess(binary, free_port(), tmp_path)
    replica = RedisProcess(binary, free_port(), tmp_path, ("--replicaof", "127.0.0.1", str(primary.port)))
    group = SentinelGroup({primary.port: primary, replica.port: replica}, [])
    try:
        primary.start()
        replica.start()
        for _ in range(3):
            sentinel = SentinelProcess(binary, free_port(), tmp_path, primary.port)
            group.sentinels.append(sentinel)
            sentinel.start()
        until(lambda: group.replicas_see(replica.port), "the Sentinels never saw the replica in sync")
        yield group
    finally:
        for sentinel in group.sentinels:
            sentinel.stop()
        for server in group.servers.values():
            server.stop()


def _other(group: SentinelGroup, port: int) -> int:
    return next(p for p in group.servers if p != port)


# -- the gateway and the loader through the Sentinels ---------------------------------------


async def test_gateway_and_loader_reach_the_primary_the_sentinels_name(
    sentinel_group: SentinelGroup, tmp_path: Path
) -> None:
    version = load_population(sentinel_group.url, tmp_path, 20)
    first = sentinel_group.primary_port()
    assert first is not None
    direct = redis.Redis(host="127.0.0.1", port=first)
    assert direct.get(Keys().live) == version.encode()
    direct.close()
    client = async_client(sentinel_group.url)
    try:
        assert await client.get(Keys().live) == version.encode()
    finally:
        await client.aclose()


@pytest.mark.parametrize("fault", ["sentinel-failover", "kill-9"])
async def test_failover_under_load_gives_no_wrong_answer(
    fault: str, sentinel_group: SentinelGroup, tmp_path: Path
) -> None:
    url = sentinel_group.url
    version = load_population(url, tmp_path, STAFF)
    old = sentinel_group.primary_port()
    assert old is not None
    new = _other(sentinel_group, old)
    until(lambda: sentinel_group.replicas_see(new), "the replica is not in sync")
    gateway = GatewayProcess(
        {
            "SGW_REDIS_URL": url,
            "SGW_STATE_DIR": str(tmp_path / "state"),
            "SGW_OUTAGE_POLICY": "refuse",
            "SGW_BREAKER_RESET": str(BREAKER_RESET),
        },
        tmp_path,
    )
    gateway.start(free_port(), free_port())
    try:
        target = f"127.0.0.1:{gateway.port}"
        requests = bills(staff_codes(STAFF), 6, "sentinel")
        reference = await truth(target, requests)
        load = Load(target, requests, concurrency=4)
        running = asyncio.create_task(load.run())
        await asyncio.sleep(1.0)
        fault_at = time.monotonic()
        if fault == "kill-9":
            sentinel_group.servers[old].kill()
        else:
            await asyncio.to_thread(sentinel_group.failover)
        await asyncio.to_thread(until, lambda: sentinel_group.primary_port() == new, "no failover")
        known_at = time.monotonic()
        await asyncio.to_thread(until, lambda: sentinel_group.role(new) == "master", "not promoted")

        def live_after(t: float) -> list[float]:
            return [o.started for o in load.outcomes if o.started >= t and o.code == OK and not o.degraded]

        deadline = time.monotonic() + 60
        while not live_after(known_at) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(BREAKER_RESET + 1.0)  # live load on the new primary
        load.stop.set()
        outcomes = await running
    finally:
        gateway.stop()

    assert not wrong_answers(outcomes, requests, reference, version)
    first_live = min(live_after(known_at))
    before = [o for o in outcomes if o.started < fault_at]
    assert before and all(o.code == OK and not o.degraded for o in before)
    # A call that took a connection to the old primary just before the switch may still end on
    # the cache: the window closes one breaker reset after the first live answer.
    settled = first_live + BREAKER_RESET
    timeline = [
        (round(o.started - fault_at, 3), o.code.name, o.degraded, o.details[:60])
        for o in outcomes
        if o.degraded or o.code != OK
    ]
    degraded = [o for o in outcomes if o.degraded]
    assert all(fault_at <= o.started < settled for o in degraded), (
        "degraded while a primary was known",
        round(known_at - fault_at, 3),
        round(first_live - fault_at, 3),
        timeline[:50],
    )
    after = [o for o in outcomes if o.started > settled]
    assert after and all(o.code == OK and not o.degraded for o in after), (timeline[-50:], gateway.tail())
    failed = {o.code for o in outcomes if o.code != OK}
    assert failed <= {grpc.StatusCode.UNAVAILABLE}, (failed, gateway.tail())


async def test_a_publish_cut_by_a_failover_fails_clearly_and_the_rerun_loads_it(
    sentinel_group: SentinelGroup, tmp_path: Path
) -> None:
    url = sentinel_group.url
    load_population(url, tmp_path, 20)
    old = sentinel_group.primary_port()
    assert old is not None
    new = _other(sentinel_group, old)
    until(lambda: sentinel_group.replicas_see(new), "the replica is not in sync")
    rows = [exports.staff_row(f"D3309021{i:05d}") for i in range(60_000)]
    path = exports.write_csv(tmp_path / "staff-big.csv", exports.HEADERS["staff"], rows)
    env = {"SGW_REDIS_URL": url, "PATH": str(BIN)}
    command = [
        str(BIN / "settlement-loader"),
        "sync",
        str(path),
        "--kind",
        "staff",
        "--json",
        "--no-progress",
    ]
    loader = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Fail over while the staging table is being written.
    staging = Keys().staging
    probe = redis.Redis(host="127.0.0.1", port=old)
    until(lambda: probe.zcard(staging) > 0 or loader.poll() is not None, "the publish never started")
    probe.close()
    sentinel_group.failover()
    out, err = loader.communicate(timeout=240)
    until(
        lambda: sentinel_group.primary_port() == new and sentinel_group.role(new) == "master", "no failover"
    )
    store = sync_client(url)
    try:
        if loader.returncode == 0:
            published = orjson.loads(out)["data_version"]
        else:
            assert b"settlement-loader:" in err, err[-2000:]
            # Publishing needs a replica to confirm it: the re-run waits, as an operator (or the
            # watcher's next pass) would, for the old primary to rejoin as the new one's replica.
            until(lambda: sentinel_group.replicas_see(old), "the old primary never rejoined")
            rerun = subprocess.run(command, env=env, capture_output=True, timeout=240, check=False)
            assert rerun.returncode == 0, rerun.stderr[-2000:]
            published = orjson.loads(rerun.stdout)["data_version"]
        until(
            lambda: store.get(Keys().live) == published.encode(),
            f"the reported version {published} is not live: {store.get(Keys().live)!r}; "
            f"first run exit {loader.returncode}: {err[-1000:]!r}",
        )
        live_table = store.hgetall(Keys().version_meta(published))
        assert live_table, "the new primary has no metadata for the published version"
    finally:
        store.close()
    gateway = GatewayProcess({"SGW_REDIS_URL": url, "SGW_STATE_DIR": str(tmp_path / "state")}, tmp_path)
    gateway.start(free_port(), free_port())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.SettlementGatewayStub(channel)
            reply = await stub.Validate(exports.request(exports.line("1", "D330902159999")))
            assert reply.data_version == published and not reply.degraded
            assert reply.verdicts[0].reason == pb.OK
    finally:
        gateway.stop()


def test_passwords_of_a_sentinel_url_are_masked_in_logs() -> None:
    masked = mask_url("redis+sentinel://gw:s3cret@h1:26379,h2:26379/svc?sentinel_password=sent")
    assert masked is not None and "s3cret" not in masked and "sent&" not in masked + "&"


async def test_rediss_sentinel_reaches_sentinels_and_redis_over_tls(tmp_path: Path) -> None:
    """``rediss+sentinel://``: Sentinels and Redis speak only TLS and require client certificates;
    the URL's ssl_* parameters serve both."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    files = {"ca.pem": ca.cert_pem, "cert.pem": cert.cert_chain_pems[0], "key.pem": cert.private_key_pem}
    for name, blob in files.items():
        blob.write_to_path(str(tmp_path / name))
    tls_args = ("--port", "0", "--tls-cert-file", str(tmp_path / "cert.pem"), "--tls-key-file",
                str(tmp_path / "key.pem"), "--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-replication", "yes")  # fmt: skip
    tls_client: dict[str, object] = {"ssl": True, "ssl_ca_certs": str(tmp_path / "ca.pem"),
                                     "ssl_certfile": str(tmp_path / "cert.pem"), "ssl_keyfile": str(tmp_path / "key.pem")}  # fmt: skip
    query = "&".join(f"{k}={v}" for k, v in tls_client.items() if k != "ssl")
    binary = find_redis_server()
    primary_port, replica_port = free_port(), free_port()
    primary = RedisProcess(binary, primary_port, tmp_path, (*tls_args, "--tls-port", str(primary_port)),
                           ready_url=f"rediss://127.0.0.1:{primary_port}/0?{query}")  # fmt: skip
    replica = RedisProcess(binary, replica_port, tmp_path,
                           (*tls_args, "--tls-port", str(replica_port), "--replicaof", "127.0.0.1", str(primary_port)),
                           ready_url=f"rediss://127.0.0.1:{replica_port}/0?{query}")  # fmt: skip
    tls_conf = "".join(f"{tls_args[i].lstrip('-')} {tls_args[i + 1]}\n" for i in range(2, len(tls_args), 2))
    sentinels: list[SentinelProcess] = []
    try:
        primary.start()
        replica.start()
        direct = redis.Redis(host="127.0.0.1", port=primary_port, **tls_client)  # type: ignore[arg-type]
        until(lambda: len(direct.execute_command("ROLE")[2]) == 1, "the replica never connected")
        direct.close()
        for _ in range(3):
            sentinel = SentinelProcess(binary, free_port(), tmp_path, primary_port, tls_conf=tls_conf,
                                       tls_client=tls_client)  # fmt: skip
            sentinels.append(sentinel)
            sentinel.start()
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        url = f"rediss+sentinel://{hosts}/{SERVICE}?{query}"
        version = load_population(url, tmp_path, 20)
        client = async_client(url)
        try:
            assert await client.get(Keys().live) == version.encode()
        finally:
            await client.aclose()
        with pytest.raises(redis.exceptions.ConnectionError):
            sync_client(f"redis+sentinel://{hosts}/{SERVICE}", timeout=0.5).get(Keys().live)  # no TLS
    finally:
        for sentinel in sentinels:
            sentinel.stop()
        replica.stop()
        primary.stop()
