"""Outbound HBONE in local mode (ISTIO_COMPAT §5.3-5.5, §9): one daemon serves both sides on one
host, as upstream's local development mode does. A client workload (127.0.0.3) reaches an HBONE
workload (127.0.0.2) through SOCKS5; the daemon carries it through a pooled mTLS HTTP/2
connection presenting the client's certificate, into its own 15008 (which presents the
destination's), and on to the application. Both identities come from the built-in CA."""
import asyncio
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess

import pytest

from daemon import EchoServer, http, socket_copies, socks5_connect, wait_for

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
ECHO_ID = "spiffe://cluster.local/ns/shop/sa/echo"


def config(echo_port):
    return f"""
workloads:
- uid: test//Pod/default/client-1
  name: client-1
  namespace: default
  serviceAccount: client
  trustDomain: cluster.local
  workloadIps: ["127.0.0.3"]
  protocol: HBONE
  workloadName: client
  workloadType: deployment
  canonicalName: client
  canonicalRevision: v1
  clusterId: test-cluster
- uid: test//Pod/default/client-2
  name: client-2
  namespace: default
  serviceAccount: client
  trustDomain: cluster.local
  workloadIps: ["127.0.0.6"]
  protocol: HBONE
- uid: test//Pod/shop/echo-1
  name: echo-1
  namespace: shop
  serviceAccount: echo
  trustDomain: cluster.local
  workloadIps: ["127.0.0.2"]
  protocol: HBONE
  workloadName: echo
  canonicalName: echo
  services:
    "shop/echo.shop.svc.cluster.local":
      80: {echo_port}
services:
- name: echo
  namespace: shop
  hostname: echo.shop.svc.cluster.local
  vips: ["/10.96.0.9"]
  ports:
    80: {echo_port}
"""


def start(start_daemon, echo_port, extra_env=None):
    daemon = start_daemon(local_config=config(echo_port), extra_env=extra_env, hbone_wildcard=True)
    inbound = daemon.ports["inbound"]
    daemon.wait_ready()
    def available():
        lines = [l for l in daemon.log().splitlines() if "identity available" in l]
        return all(any(f"identity={i}" in l for l in lines) for i in (CLIENT_ID, ECHO_ID))
    wait_for(available, 30, "both workload identities")
    return daemon, inbound


def round_trip(sock, payload):
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


def open_tunnel(daemon, payload):
    """A SOCKS5 connection from client-1 to the echo service, tunnelled, with `payload` echoed
    once through it; the socket stays open."""
    sock, code = socks5_connect(daemon.ports["socks5"], 80, "10.96.0.9", source="127.0.0.3")
    assert code == 0
    sock.sendall(payload)
    sock.settimeout(10)
    assert sock.recv(len(payload)) == payload
    return sock


def access_lines(daemon):
    return [l for l in daemon.log().splitlines() if "\taccess\tconnection complete" in l]


def test_socks5_to_an_hbone_workload_is_tunneled_with_both_identities(start_daemon):
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon, inbound = start(start_daemon, echo.port)
        payload = os.urandom(1 << 20)
        for target in ("127.0.0.2", "10.96.0.9"):  # the workload's address, then the service VIP
            sock, code = socks5_connect(daemon.ports["socks5"], 80 if target.startswith("10.") else echo.port, target,
                                        source="127.0.0.3")
            with sock:
                assert code == 0, f"SOCKS5 reply {code} for {target}:\n{daemon.log()[-3000:]}"
                assert hashlib.sha256(round_trip(sock, payload)).digest() == hashlib.sha256(payload).digest()
        wait_for(lambda: len(access_lines(daemon)) >= 4, 10, "both sides' access-log lines for both connections")
        lines = access_lines(daemon)
        outbound = [l for l in lines if "direction=outbound" in l]
        inbound_lines = [l for l in lines if "direction=inbound" in l]
        assert len(outbound) == 2 and len(inbound_lines) == 2, lines
        for line in outbound:
            assert f"src.identity={CLIENT_ID}" in line and f"dst.identity={ECHO_ID}" in line, line
            assert f"dst.addr=127.0.0.2:{inbound}" in line and f"dst.hbone_addr=127.0.0.2:{echo.port}" in line, line
            assert f"bytes_sent={1 << 20}" in line and f"bytes_recv={1 << 20}" in line, line
        for line in inbound_lines:
            assert f"src.identity={CLIENT_ID}" in line and f"dst.identity={ECHO_ID}" in line, line
        # Both connections went over one pooled HBONE connection, whose 15008 side presented the
        # destination's certificate: one handshake, seen from the server.
        assert daemon.log().count("inbound: mTLS established") == 1, daemon.log()[-4000:]
        metrics = http(daemon.ports["stats"], "/metrics")[1]
        opened = [l for l in metrics.splitlines() if l.startswith("istio_tcp_connections_opened_total{")]
        assert any('reporter="source"' in l and 'connection_security_policy="mutual_tls"' in l
                   and f'source_principal="{CLIENT_ID}"' in l for l in opened), opened
        assert any('reporter="destination"' in l and 'connection_security_policy="mutual_tls"' in l for l in opened), opened
    finally:
        echo.close()


def test_an_hbone_workload_is_refused_for_a_client_that_is_no_workload(start_daemon):
    """Fail closed: with no source workload there is no identity to present, and the mesh
    workload's traffic is never sent in plaintext."""
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon, _ = start(start_daemon, echo.port)
        sock, code = socks5_connect(daemon.ports["socks5"], echo.port, "127.0.0.2", source="127.0.0.9")
        sock.close()
        assert code != 0
        wait_for(lambda: "no workload of this node to present an identity for" in daemon.log(), 10, "the refusal's reason")
    finally:
        echo.close()


async def _one_stream(socks_port, dest_port, payload, replied, all_replied):
    """One SOCKS5 connection to the echo workload; it ends its side only once every stream of the
    test has been answered, so all of them are open at the same time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", socks_port, local_addr=("127.0.0.3", 0))
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    writer.write(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.2") + struct.pack(">H", dest_port))
    reply = await reader.readexactly(10)
    assert reply[1] == 0, f"SOCKS5 reply {reply[1]}"
    writer.write(payload)
    await writer.drain()
    replied()
    await all_replied.wait()
    writer.write_eof()
    received = await reader.read()
    writer.close()
    return hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def hbone_connections(port):
    """Established TCP connections to 127.0.0.2:port (the pool's, seen from their client side)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "dst", f"127.0.0.2:{port}"], capture_output=True, text=True)
    return len([l for l in out.stdout.splitlines() if l.strip()])


def test_a_thousand_concurrent_streams_share_pooled_connections(start_daemon):
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon, inbound = start(start_daemon, echo.port, {"ZTUNNEL_MAX_CONNECTIONS": "4096", "ZTUNNEL_WORKER_THREADS": "2"})
        payloads = [os.urandom(16 * 1024 + i) for i in range(1000)]
        peak = {}

        async def run():
            all_replied = asyncio.Event()
            answered = []

            def replied():
                answered.append(1)
                if len(answered) == len(payloads):
                    peak["connections"] = hbone_connections(inbound)
                    all_replied.set()
            return await asyncio.gather(*(_one_stream(daemon.ports["socks5"], echo.port, p, replied, all_replied)
                                          for p in payloads))

        results = asyncio.run(run())
        assert all(results), f"{results.count(False)} of 1000 streams lost bytes"
        # 1000 streams open at once, at most 100 per connection (POOL_MAX_STREAMS_PER_CONNECTION)
        # and one pool per event loop (2 here): at least 10 connections, at most 12.
        assert 10 <= peak["connections"] <= 12, f"{peak['connections']} HBONE connections for 1000 streams"
        wait_for(lambda: len([l for l in access_lines(daemon) if "direction=outbound" in l]) >= 1000, 30,
                 "1000 outbound access-log lines")
        assert not [l for l in access_lines(daemon) if "error=" in l]
    finally:
        echo.close()


def test_a_reader_that_pauses_does_not_stall_the_tunnel(start_daemon):
    """Backpressure engages and releases: the client writes 48 MiB without reading, so the echo
    server, then both HBONE windows, then the client's own socket fill up and reading pauses at
    every hop; once the client reads, everything flows again and arrives intact. (A resume
    condition that missed the moment the queue crossed its bound stalled this for good.)"""
    import threading
    import time
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon, _ = start(start_daemon, echo.port)
        payload = os.urandom(48 << 20)
        sock, code = socks5_connect(daemon.ports["socks5"], echo.port, "127.0.0.2", source="127.0.0.3", timeout=60)
        assert code == 0
        progress = {"sent": 0, "done": False}

        def write():
            view = memoryview(payload)
            for offset in range(0, len(payload), 65536):
                sock.sendall(view[offset:offset + 65536])
                progress["sent"] = offset + 65536
            sock.shutdown(socket.SHUT_WR)
            progress["done"] = True
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        # Start reading only once the writer is held back by backpressure (no progress for
        # 300 ms) or has finished: every bound in the path has then been reached.
        last, since = -1, time.monotonic()
        while not progress["done"] and time.monotonic() - since < 0.3:
            if progress["sent"] != last:
                last, since = progress["sent"], time.monotonic()
            time.sleep(0.02)
        received = bytearray()
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
        writer.join(timeout=60)
        sock.close()
        assert len(received) == len(payload)
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    finally:
        echo.close()


def test_a_networker_killed_mid_stream_loses_only_its_own_streams(start_daemon):
    """A client-side daemon with two NetWorkers tunnels 200 streams at once to a server-side
    daemon (both trust one CA); one client-side NetWorker is killed with SIGKILL. Every stream
    either completes with its bytes intact or ends (EOF or reset) without wrong bytes; the other
    worker's streams complete; the killed one is replaced and new tunnels work."""
    import signal
    import tempfile
    from identities import MiniCA
    echo = EchoServer(host="127.0.0.2")
    cacerts = tempfile.mkdtemp(prefix="ztunnel-test-ca-")
    try:
        MiniCA().write_cacerts(cacerts)
        server_side = start_daemon(local_config=config(echo.port), hbone_wildcard=True, extra_env={"ZTUNNEL_CA_DIR": cacerts})
        server_side.wait_ready()
        daemon = start_daemon(local_config=config(echo.port), extra_env={
            "ZTUNNEL_CA_DIR": cacerts, "ZTUNNEL_HBONE_PORT": str(server_side.ports["inbound"]),
            "ZTUNNEL_NET_WORKERS": "2", "ZTUNNEL_MAX_CONNECTIONS": "4096"})
        daemon.wait_ready()
        wait_for(lambda: daemon.log().count("identity available") >= 4 and "identity available" in server_side.log(), 30,
                 "both daemons' identities")
        workers = daemon.workers("net-worker")
        assert len(workers) == 2
        first, rest = os.urandom(4096), os.urandom(60_000)

        async def one(opened, kill):
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.ports["socks5"], local_addr=("127.0.0.3", 0))
            writer.write(b"\x05\x01\x00")
            assert await reader.readexactly(2) == b"\x05\x00"
            writer.write(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.2") + struct.pack(">H", echo.port))
            assert (await reader.readexactly(10))[1] == 0
            writer.write(first)
            echoed = await reader.readexactly(len(first))
            assert echoed == first
            opened()
            await kill.wait()
            try:
                writer.write(rest)
                await writer.drain()
                writer.write_eof()
                received = await asyncio.wait_for(reader.read(), 30)
            except (OSError, asyncio.IncompleteReadError):  # reset, or not connected any more
                return "ended"
            finally:
                writer.close()
            if received == rest:
                return "intact"
            assert rest.startswith(received), "wrong bytes after the kill"
            return "ended"

        async def run():
            kill = asyncio.Event()
            count = []

            def opened():
                count.append(1)
                if len(count) == 200:
                    os.kill(workers[0], signal.SIGKILL)
                    kill.set()
            return await asyncio.gather(*(one(opened, kill) for _ in range(200)))

        outcomes = asyncio.run(run())
        assert outcomes.count("intact") + outcomes.count("ended") == 200
        assert outcomes.count("intact") > 0, "the surviving NetWorker's streams were lost too"
        wait_for(lambda: len(daemon.workers("net-worker")) == 2 and workers[0] not in daemon.workers("net-worker")
                 and daemon.ready(), 30, "the replacement NetWorker")
        for _ in range(10):  # new tunnels work, whichever worker takes them
            sock, code = socks5_connect(daemon.ports["socks5"], echo.port, "127.0.0.2", source="127.0.0.3")
            with sock:
                assert code == 0
                assert round_trip(sock, b"after the kill") == b"after the kill"
        print(f"\n200 streams, one of two NetWorkers killed: {outcomes.count('intact')} intact, "
              f"{outcomes.count('ended')} ended")
    finally:
        echo.close()
        shutil.rmtree(cacerts, ignore_errors=True)


def test_an_unused_pooled_connection_is_released_after_a_long_stream(start_daemon):
    """POOL_UNUSED_RELEASE_TIMEOUT (here 1 s): the pooled connection is closed (GOAWAY) once it
    has carried no stream for that long, also when its first stream outlived the timeout (the
    timer then fired while the stream was open; it must be armed again when the stream ends)."""
    import time
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon, inbound = start(start_daemon, echo.port, {"POOL_UNUSED_RELEASE_TIMEOUT": "1s"})
        sock, code = socks5_connect(daemon.ports["socks5"], echo.port, "127.0.0.2", source="127.0.0.3")
        assert code == 0
        sock.sendall(b"first")
        assert sock.recv(100) == b"first"
        assert hbone_connections(inbound) == 1
        time.sleep(1.5)  # the stream outlives the release timeout: time passing is the behaviour
        sock.sendall(b"still open")
        assert sock.recv(100) == b"still open" and hbone_connections(inbound) == 1
        sock.close()
        wait_for(lambda: hbone_connections(inbound) == 0, 10, "the unused pooled connection to be released")
    finally:
        echo.close()


def test_pooled_connections_are_not_shared_across_source_addresses(start_daemon):
    """§5.5: the pool key holds the source IP: two pods with one identity get two connections,
    and a pod's second connection reuses its first's. One event loop, so that one pool sees all."""
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon, inbound = start(start_daemon, echo.port, {"ZTUNNEL_WORKER_THREADS": "1"})
        held = []
        for source in ("127.0.0.3", "127.0.0.6", "127.0.0.3"):
            sock, code = socks5_connect(daemon.ports["socks5"], echo.port, "127.0.0.2", source=source)
            assert code == 0
            sock.sendall(b"hi")
            assert sock.recv(10) == b"hi"
            held.append(sock)
        assert hbone_connections(inbound) == 2
        for sock in held:
            sock.close()
    finally:
        echo.close()


def test_bulk_data_both_ways_on_one_pooled_connection(start_daemon):
    """Eight tunnels on one pooled connection each send 24 MiB to an echo server and read it back
    at the same time, so both ends of the HBONE connection write bulk data at once: neither may
    stop reading the other (that deadlocked them), and every byte arrives."""
    import threading
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon, _ = start(start_daemon, echo.port, {"ZTUNNEL_WORKER_THREADS": "1"})
        results = []

        def one():
            payload = os.urandom(24 << 20)
            sock, code = socks5_connect(daemon.ports["socks5"], echo.port, "127.0.0.2", source="127.0.0.3", timeout=60)
            assert code == 0
            writer = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)), daemon=True)
            writer.start()
            received = bytearray()
            try:
                while chunk := sock.recv(1 << 20):
                    received += chunk
            except OSError:
                pass
            writer.join(timeout=60)
            sock.close()
            results.append(hashlib.sha256(received).digest() == hashlib.sha256(payload).digest())
        threads = [threading.Thread(target=one, daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert results == [True] * 8, results
    finally:
        echo.close()


def test_socks5_names_a_mesh_service_by_its_hostname(start_daemon):
    """SOCKS5 by name (§14): a mesh service's hostname resolves to its VIP and is routed like it
    (here through the tunnel), without asking any nameserver."""
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon, _ = start(start_daemon, echo.port)
        sock, code = socks5_connect(daemon.ports["socks5"], 80, "echo.shop.svc.cluster.local", source="127.0.0.3")
        with sock:
            assert code == 0
            sock.sendall(b"by name")
            assert sock.recv(100) == b"by name"
        wait_for(lambda: "dst.service=echo.shop.svc.cluster.local" in daemon.log(), 10, "the tunnel's access-log line")
    finally:
        echo.close()


def test_socks5_names_outside_the_mesh_are_asked_of_the_nodes_nameservers(start_daemon, tmp_path):
    """§14: a name that is no mesh service is resolved by the nameservers of ztunnel's
    resolv.conf (here a stub), then routed as its address: plain TCP to an address outside the
    mesh, HBONE to a mesh workload's. A name without an address is refused with the reason, and a
    name pointing at this proxy's own ports on loopback meets the same guard as the address."""
    from dns_stub import DnsStub
    echo = EchoServer(host="127.0.0.2")
    outside = EchoServer(host="127.0.0.4")
    stub = DnsStub("127.0.0.79", {"plain.example": "127.0.0.4", "pod.example": "127.0.0.2", "self.example": "127.0.0.1"})
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.79\n")
    try:
        daemon = start_daemon(local_config=config(echo.port), hbone_wildcard=True, etc={"resolv.conf": str(resolv)})
        daemon.wait_ready()
        wait_for(lambda: "identity available identity=" + ECHO_ID in daemon.log(), 30, "the echo identity")
        # A fully qualified name, in capitals, is the same name.
        for name, port in (("plain.example", outside.port), ("pod.example", echo.port), ("PLAIN.example.", outside.port)):
            sock, code = socks5_connect(daemon.ports["socks5"], port, name, source="127.0.0.3")
            with sock:
                assert code == 0, (name, daemon.log()[-3000:])
                assert round_trip(sock, name.encode()) == name.encode()
        assert stub.queries.count(("plain.example", 1)) == 2, stub.queries
        assert ("plain.example", 1) in stub.queries and ("pod.example", 1) in stub.queries, stub.queries
        wait_for(lambda: len(access_lines(daemon)) >= 3, 10, "the access-log lines")
        lines = [l for l in access_lines(daemon) if "direction=outbound" in l]
        assert any(f"dst.addr=127.0.0.4:{outside.port}" in l and "src.identity" not in l for l in lines), lines
        assert any(f"dst.hbone_addr=127.0.0.2:{echo.port}" in l and f"dst.identity={ECHO_ID}" in l for l in lines), lines
        sock, code = socks5_connect(daemon.ports["socks5"], 80, "missing.example", source="127.0.0.3")
        sock.close()
        assert code == 4
        wait_for(lambda: "the nameservers gave no address for missing.example" in daemon.log(), 10, "the refusal's reason")
        # Back into this proxy through a name: the loop guard sees the address.
        sock, code = socks5_connect(daemon.ports["socks5"], daemon.ports["socks5"], "self.example", source="127.0.0.3")
        sock.close()
        assert code == 2  # not allowed: loopback on a proxy port
    finally:
        stub.close()
        outside.close()
        echo.close()


def test_a_workload_known_by_hostname_is_resolved_when_a_connection_goes_to_it(start_daemon, tmp_path):
    """§9 step 6: a service endpoint with a hostname and no address (a ServiceEntry with DNS
    resolution) is resolved through ztunnel's nameservers when a connection is routed to it, and
    counted in istio_on_demand_dns_total by source and hostname. Plain TCP for a workload that does
    not speak HBONE, a tunnel for one that does; a name without an address, or one that points at
    loopback, is refused with the reason."""
    from dns_stub import DnsStub
    echo = EchoServer(host="127.0.0.2")
    outside = EchoServer(host="127.0.0.4")
    stub = DnsStub("127.0.0.79", {"ext.example": "127.0.0.4", "meshed.example": "127.0.0.2", "self.example": "127.0.0.1"})
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.79\n")
    text = config(echo.port).replace("services:\n- name: echo", f"""- uid: test//ServiceEntry/shop/ext
  name: ext
  namespace: shop
  hostname: ext.example
  workloadIps: []
  services:
    "shop/ext.shop.svc.cluster.local":
      80: {outside.port}
- uid: test//ServiceEntry/shop/meshed
  name: meshed
  namespace: shop
  serviceAccount: echo
  trustDomain: cluster.local
  hostname: meshed.example
  workloadIps: []
  protocol: HBONE
  services:
    "shop/meshed.shop.svc.cluster.local":
      80: {echo.port}
- uid: test//ServiceEntry/shop/missing
  name: missing
  namespace: shop
  hostname: missing.example
  workloadIps: []
  services:
    "shop/missing.shop.svc.cluster.local":
      80: 80
- uid: test//ServiceEntry/shop/self
  name: self
  namespace: shop
  hostname: self.example
  workloadIps: []
  services:
    "shop/self.shop.svc.cluster.local":
      80: OUTBOUNDPORT
services:
- name: ext
  namespace: shop
  hostname: ext.shop.svc.cluster.local
  vips: ["/10.96.0.30"]
  ports:
    80: 0
- name: meshed
  namespace: shop
  hostname: meshed.shop.svc.cluster.local
  vips: ["/10.96.0.31"]
  ports:
    80: 0
- name: missing
  namespace: shop
  hostname: missing.shop.svc.cluster.local
  vips: ["/10.96.0.32"]
  ports:
    80: 0
- name: self
  namespace: shop
  hostname: self.shop.svc.cluster.local
  vips: ["/10.96.0.33"]
  ports:
    80: 0
- name: echo""", 1)
    assert "ext.example" in text
    try:
        # self.example answers 127.0.0.1, and its port is this daemon's own 15001: a loop, which
        # the loop guard refuses.
        from daemon import free_ports
        (outbound,) = free_ports(1)
        daemon = start_daemon(local_config=text.replace("OUTBOUNDPORT", str(outbound)), hbone_wildcard=True,
                              etc={"resolv.conf": str(resolv)}, extra_env={"ZTUNNEL_OUTBOUND_ADDR": f"127.0.0.1:{outbound}"})
        daemon.wait_ready()
        wait_for(lambda: "identity available identity=" + ECHO_ID in daemon.log(), 30, "the echo identity")
        for vip in ("10.96.0.30", "10.96.0.30", "10.96.0.31"):
            sock, code = socks5_connect(daemon.ports["socks5"], 80, vip, source="127.0.0.3")
            with sock:
                assert code == 0, (vip, daemon.log()[-3000:])
                assert round_trip(sock, vip.encode()) == vip.encode()
        assert stub.queries.count(("ext.example", 1)) == 2 and ("meshed.example", 1) in stub.queries, stub.queries
        wait_for(lambda: len(access_lines(daemon)) >= 4, 10, "the access-log lines")
        lines = [l for l in access_lines(daemon) if "direction=outbound" in l]
        assert any(f"dst.addr=127.0.0.4:{outside.port}" in l and "dst.workload=ext" in l for l in lines), lines
        assert any(f"dst.hbone_addr=127.0.0.2:{echo.port}" in l and f"dst.identity={ECHO_ID}" in l for l in lines), lines
        for vip, reason in (("10.96.0.32", "missing.example (workload test//ServiceEntry/shop/missing) resolved to no usable address"),
                            ("10.96.0.33", "self.example (workload test//ServiceEntry/shop/self) resolved to no usable address")):
            sock, code = socks5_connect(daemon.ports["socks5"], 80, vip, source="127.0.0.3")
            sock.close()
            assert code == 4
            wait_for(lambda: reason in daemon.log(), 10, "the refusal's reason")
        body = http(daemon.ports["stats"], "/metrics")[1]
        counted = {l.split("hostname=")[1].rsplit(" ", 1)[0]: l.rsplit(" ", 1)[1] for l in body.splitlines() if l.startswith("istio_on_demand_dns_total{")}
        assert counted == {'"ext.example"}': "2", '"meshed.example"}': "1", '"missing.example"}': "1", '"self.example"}': "1"}, counted
        ext = next(l for l in body.splitlines() if l.startswith("istio_on_demand_dns_total{") and "ext.example" in l)
        assert ('source_workload="client",source_canonical_service="client",source_canonical_revision="v1",'
                'source_workload_namespace="default",source_principal="spiffe://cluster.local/ns/default/sa/client"') in ext, ext
    finally:
        stub.close()
        outside.close()
        echo.close()


@pytest.mark.parametrize("enabled", [True, False])
def test_every_proxied_socket_has_tcp_keepalive_as_upstream(start_daemon, enabled):
    """KEEPALIVE_* (§18, on by default: 180 s idle, 180 s between 9 probes): every socket of a
    tunnelled connection the NetWorker holds (the client's, the pool's to 15008, 15008's
    accepted one, the application's) has TCP keepalive armed (`ss -o`: timer keepalive, here
    with KEEPALIVE_TIME=77s); KEEPALIVE_ENABLED=false arms none."""
    echo = EchoServer(host="127.0.0.2")
    try:
        env = {"UNSTABLE_ENABLE_SOCKS5": "true", "KEEPALIVE_TIME": "77s"}
        if not enabled:
            env["KEEPALIVE_ENABLED"] = "false"
        daemon, _ = start(start_daemon, echo.port, env)
        (net,) = daemon.workers("net-worker")
        with open_tunnel(daemon, b"keep"):

            def sockets():
                listing = subprocess.run(["ss", "-tnoHp", "state", "established"], capture_output=True, text=True, check=True).stdout
                return [l for l in listing.splitlines() if f"pid={net}," in l]
            # ss shows one timer per socket: a retransmission or delayed-ACK timer hides the
            # keepalive one for a moment after bytes moved, so the quiet state is awaited.
            quiet = lambda: all("timer:(on," not in l for l in sockets()) and sockets()  # noqa: E731
            mine = wait_for(quiet, 10, "the sockets quiet")
            assert len(mine) >= 4, mine  # client, pool -> 15008, 15008's, -> application
            with_keepalive = [l for l in mine if "timer:(keepalive," in l]
            if enabled:
                assert len(with_keepalive) == len(mine), mine
                assert all(re.search(r"timer:\(keepalive,1min1[0-7]sec,0\)", l) for l in with_keepalive), with_keepalive
            else:
                assert not with_keepalive, mine
    finally:
        echo.close()


def listener_options(pid):
    """TCP_NODELAY, SO_KEEPALIVE and TCP_KEEPIDLE of each TCP listener of process `pid`, by
    port, read from copies of its fds."""
    found = {}
    for _, s in socket_copies(pid):
        if s.type != socket.SOCK_STREAM or s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
            continue
        found[s.getsockname()[1]] = (s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                                     s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                                     s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
    return found


def test_the_supervisor_sets_the_keepalive_options_before_its_proxy_listeners_listen(start_daemon):
    """Accepted connections inherit TCP_NODELAY and the keepalive options from their listener,
    so the Supervisor sets them before `listen`: a connection that waits in the backlog before a
    NetWorker adopts the listener (or while it is replaced) has them too. The admin, stats and
    readiness ports proxy nothing and get no keepalive."""
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon, _ = start(start_daemon, echo.port, {"UNSTABLE_ENABLE_SOCKS5": "true", "KEEPALIVE_TIME": "77s"})
        options = listener_options(daemon.pid)
        for name in ("outbound", "inbound_plaintext", "inbound", "socks5"):
            assert options[daemon.ports[name]] == (1, 1, 77), (name, options)
        for name in ("admin", "stats", "readiness"):
            assert options[daemon.ports[name]][1] == 0, (name, options)
    finally:
        echo.close()


@pytest.mark.parametrize("side", ["client", "server"])
def test_a_certificate_verify_that_does_not_verify_fails_the_handshake(start_daemon, side):
    """A peer whose CertificateVerify was signed by another key than its certificate's (fault
    probe `cert-bad-<side>-signature`: the CertWorker signs that side's handshakes over a changed
    content). The side that checks it, with the key decoded from the peer's certificate, refuses
    the handshake: 15008 when the client's is bad, our outbound side when the server's is. No
    byte reaches the application, the refusal is logged with OpenSSL's reason, and the NetWorker
    keeps serving."""
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon, _ = start(start_daemon, echo.port, extra_env={"ZTUNNEL_DEBUG_FAULT_INJECTION": "true"})
        (worker,) = daemon.workers("net-worker")
        target = f"/debug/fault?kind=cert-bad-{side}-signature"
        assert http(daemon.ports["admin"], target, method="POST")[0] == 200
        wait_for(lambda: f"fault cert-bad-{side}-signature:" in daemon.log(), 10, "the CertWorker to take the fault")
        sock, code = socks5_connect(daemon.ports["socks5"], echo.port, "127.0.0.2", source="127.0.0.3")
        with sock:
            if code == 0:  # the reply may come before the tunnel's answer; no byte comes back
                sock.settimeout(10)
                sock.sendall(b"must not arrive")
                try:
                    assert sock.recv(100) == b""
                except ConnectionResetError:
                    pass
        refusal = "inbound: TLS handshake failed" if side == "client" else "outbound"
        wait_for(lambda: any("bad signature" in l and refusal in l for l in daemon.log().splitlines()), 10,
                 f"the {'server' if side == 'client' else 'client'} side to refuse the signature")
        assert echo.accepted == 0
        wait_for(lambda: any("direction=outbound" in l and "bytes_sent=0" in l and " error=" in l for l in access_lines(daemon)),
                 10, "the client's access-log line with the failure")
        assert daemon.workers("net-worker") == [worker]
        assert http(daemon.ports["readiness"], "/healthz/ready")[0] == 200
    finally:
        echo.close()
