"""The gRPC facade as an operator runs it: health probes that follow the pool, TLS and mutual TLS,
a graceful stop, backpressure from a slow client, and keepalive finding a client that vanished
without closing its connection."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="the dev extra's grpcio-tools compiles the test client")

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import BreaksOnRestart, Faulty, Toolbox, wait_for
from test_grpc_server import DRIVER, bridge, compiled  # noqa: F401

from snakepit import Pool, SnakepitError
from snakepit.grpc import TLS, Client, ClientTLS


def health_status(address: str) -> str:
    with grpc.insecure_channel(address) as chan:
        reply = health_pb2_grpc.HealthStub(chan).Check(
            health_pb2.HealthCheckRequest(service="snakepit.bridge.BridgeService"), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_health_follows_the_pool_not_serving_while_it_has_no_worker(tmp_path):
    marker = tmp_path / "corrupt"
    with Pool(BreaksOnRestart, size=1, adapter_args={"marker": str(marker)}, start_timeout=30) as pool:
        address = pool.serve("127.0.0.1:0").address
        assert health_status(address) == "SERVING"
        marker.touch()  # from now on every new worker fails to start
        os.kill(pool.execute("pid"), 9)
        wait_for(lambda: health_status(address) == "NOT_SERVING", timeout=30, interval=0.1)
        marker.unlink()  # the next attempt starts
        wait_for(lambda: health_status(address) == "SERVING", timeout=60, interval=0.2)
        assert pool.execute("pid") > 0


def test_health_watchers_hear_of_the_change(tmp_path):
    marker = tmp_path / "corrupt"
    with Pool(BreaksOnRestart, size=1, adapter_args={"marker": str(marker)}, start_timeout=30) as pool:
        address = pool.serve("127.0.0.1:0").address
        with grpc.insecure_channel(address) as chan:
            watch = health_pb2_grpc.HealthStub(chan).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            marker.touch()
            os.kill(pool.execute("pid"), 9)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()


# -- TLS -------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, both signed by
    it, and a stranger's self-signed client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates")
    where = tmp_path_factory.mktemp("certs")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=snakepit test CA", cwd=where
    )
    (where / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (where / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=where)
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=where,
        )
    _openssl(
        "req", "-x509", *key, "-keyout", "stranger.key", "-out", "stranger.pem", "-days", "2", "-subj", "/CN=stranger", cwd=where
    )
    return where


def test_tls_serves_clients_that_trust_its_ca(certs, compiled):  # noqa: F811
    with Pool(Toolbox, size=1) as pool:
        server = pool.serve("127.0.0.1:0", tls=TLS(str(certs / "server.pem"), str(certs / "server.key")))
        with Client(server.address, tls=ClientTLS(ca_file=str(certs / "ca.pem"))) as client:
            assert client.execute("add", {"a": 2, "b": 3}) == 5
        done = subprocess.run(  # the generated client, over TLS
            [sys.executable, str(DRIVER), str(compiled), server.address, str(certs / "ca.pem")],
            input=json.dumps([{"rpc": "Ping", "request": {"message": "tls"}}]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(done.stdout)["response"]["message"] == "tls", done.stderr
        with grpc.insecure_channel(server.address) as plain:  # a plaintext client gets no answer
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_mutual_tls_admits_only_clients_with_a_certificate_from_its_ca(certs):
    tls = TLS(str(certs / "server.pem"), str(certs / "server.key"), client_ca_file=str(certs / "ca.pem"))
    with Pool(Toolbox, size=1) as pool:
        server = pool.serve("0.0.0.0:0", tls=tls)  # mutual TLS authenticates: a public bind is allowed
        address = f"localhost:{server.port}"
        with Client(
            address, tls=ClientTLS(str(certs / "ca.pem"), str(certs / "client.pem"), str(certs / "client.key"))
        ) as client:
            assert client.execute("add", {"a": 1, "b": 1}) == 2
        for cert in (None, "stranger"):
            pair = (None, None) if cert is None else (str(certs / f"{cert}.pem"), str(certs / f"{cert}.key"))
            with Client(address, tls=ClientTLS(str(certs / "ca.pem"), *pair)) as refused:
                with pytest.raises(SnakepitError) as info:
                    refused.execute("add", {"a": 1}, timeout=10)
                assert info.value.category in ("pool", "timeout")
        assert pool.stats()["requests"] == 1  # only the admitted client's call reached the pool


# -- stopping ----------------------------------------------------------------------------------------


def test_stop_lets_calls_finish_within_the_grace_then_cancels_them():
    with Pool(Faulty, size=2) as pool:
        server = pool.serve("127.0.0.1:0")
        results: dict[str, object] = {}

        def call(name: str, seconds: float) -> None:
            with Client(server.address) as client:
                try:
                    results[name] = client.execute("blocked", {"how": "sleep", "seconds": seconds}, timeout=60)
                except SnakepitError as exc:
                    results[name] = exc

        quick = threading.Thread(target=call, args=("quick", 1.0))
        slow = threading.Thread(target=call, args=("slow", 60.0))
        quick.start(), slow.start()
        wait_for(lambda: pool.stats()["busy"] == 2)
        started = time.monotonic()
        server.stop(grace=3)
        stopped = time.monotonic() - started
        quick.join(30), slow.join(30)
        assert results["quick"] == "sleep"  # finished within the grace
        assert isinstance(results["slow"], SnakepitError)  # cancelled when it ran out
        assert 2.5 < stopped < 30
        wait_for(lambda: pool.stats()["busy"] == 0)  # the slow call was interrupted in its worker
        assert pool.stats()["restarts"] == 0 and pool.execute("sleep", {"seconds": 0}) == 0


# -- backpressure ------------------------------------------------------------------------------------


def test_a_slow_reader_slows_the_tool_and_the_owner_holds_no_stream(compiled):  # noqa: F811
    import psutil

    owner = psutil.Process()
    with Pool(Faulty, size=1) as pool:
        address = pool.serve("127.0.0.1:0").address
        before = owner.memory_info().rss
        peak = [before]
        reading = threading.Event()

        def sample() -> None:
            while not reading.wait(0.02):
                peak[0] = max(peak[0], owner.memory_info().rss)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:  # 1 MiB chunks, endless; the client reads 8 of them in 2 s
            [read] = bridge(
                compiled, address, {"rpc": "ExecuteStreamingTool", "request": {"tool_name": "flood"}, "read": 8, "delay": 0.25}
            )
        finally:
            reading.set()
            sampler.join()
        assert len(read["chunks"]) == 8
        counters = wait_for(lambda: (c := pool.execute("flooded", timeout=10))["closed_streams"] == 1 and c)
        # unthrottled, the tool makes gigabytes in 2 s; held back, it runs a few buffers ahead
        assert counters["produced"] < 8 + 64, counters
        assert peak[0] - before < 200 * 2**20, (before, peak[0])


# -- keepalive -------------------------------------------------------------------------------------


class _Blackhole:
    """A TCP relay that can go silent without closing anything: the network vanished between a
    client and the server (a cable pulled, a laptop shut), which neither side hears of."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.silent = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.target)
            self.sockets += [near, far]
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        while not self.silent.is_set():
            try:
                data = source.recv(65536)
                if not data or self.silent.is_set():
                    break
                sink.sendall(data)
            except OSError:
                break
        self.silent.wait()  # hold the sockets open, say nothing

    def close(self) -> None:
        self.silent.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_keepalive_finds_a_vanished_client_and_cancels_its_stream(compiled, monkeypatch):  # noqa: F811
    from snakepit.grpc import _server as server_module

    monkeypatch.setattr(server_module, "_KEEPALIVE_MS", 500)  # seconds, not the 20 s + 10 s of production
    monkeypatch.setattr(server_module, "_KEEPALIVE_TIMEOUT_MS", 1000)
    with Pool(Faulty, size=1) as pool:
        server = pool.serve("127.0.0.1:0")
        relay = _Blackhole(("127.0.0.1", server.port))
        client = subprocess.Popen(
            [sys.executable, str(DRIVER), str(compiled), f"127.0.0.1:{relay.port}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            client.stdin.write(
                json.dumps([{"rpc": "ExecuteStreamingTool", "request": {"tool_name": "guarded"}, "params": {}, "delay": 0.001}])
            )
            client.stdin.close()
            wait_for(lambda: pool.stats()["busy"] == 1, timeout=30)
            relay.silent.set()
            wait_for(lambda: pool.stats()["busy"] == 0, timeout=30, interval=0.05)
            assert pool.execute("closed", timeout=10) == 1 and pool.stats()["restarts"] == 0  # its finally ran
        finally:
            client.kill()
            client.wait(10)
            relay.close()


# -- shutdown --------------------------------------------------------------------------------------

_CYCLES = """
import sys
from helpers import Toolbox
from snakepit import Pool
from snakepit.grpc import Client

with Pool(Toolbox, size=1) as pool:
    for i in range(20):
        server = pool.serve("127.0.0.1:0")
        with Client(server.address) as client:
            assert client.execute("add", {"a": i}) == i + 1
        server.stop()
print("cycled")
"""


def test_servers_started_and_stopped_again_and_again_shut_down_cleanly():
    """grpc.aio tears its poller down when its last user goes and sets up a new one for the next
    server: a reader of the old one, left on the loop, then fired on a closed descriptor."""
    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", _CYCLES],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])},
    )
    assert done.returncode == 0 and done.stdout.strip() == "cycled", done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Errno" not in done.stderr, done.stderr[-3000:]


def test_the_command_line_server_ends_cleanly_on_sigterm():
    import signal

    server = subprocess.Popen(
        [sys.executable, "-m", "snakepit", "serve", "showcase", "--size", "1", "--address", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = server.stdout.readline()
        assert banner.startswith("serving showcase"), banner + server.stderr.read()
        with Client(banner.split()[-1]) as client:
            assert client.execute("add", {"a": 2, "b": 3}) == 5.0
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        stderr = server.stderr.read()
        assert "Traceback" not in stderr and "Errno" not in stderr, stderr[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
