"""Issue #6 bounds: every phase has a deadline, every listener a cap, every buffer a bound, and
reaching one is logged once with the listener and the peer and counted on the stats port."""
import resource
import socket
import struct
import threading
import time

from daemon import http, proc_status, wait_for


def metric(daemon, listener, bound):
    _, body = http(daemon.ports["stats"], "/metrics")
    prefix = f'ztunnel_bound_reached_total{{listener="{listener}",bound="{bound}"}} '
    for line in body.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix):])
    return 0


def closed_by_peer(sock, timeout):
    """Whether the peer closes `sock` (EOF or reset) within `timeout` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_silent_tls_clients_meet_the_handshake_deadline(start_daemon):
    daemon = start_daemon(extra_env={"ZTUNNEL_HANDSHAKE_TIMEOUT": "300ms"})
    daemon.wait_ready()
    with socket.create_connection(("127.0.0.1", daemon.ports["inbound"])) as silent:
        assert closed_by_peer(silent, 10)
    wait_for(lambda: metric(daemon, "inbound", "handshake_timeout") == 1, 10, "the bound counted")
    line = next(l for l in daemon.log().splitlines() if "handshake_timeout reached" in l)
    assert "listener=inbound" in line and "peer=[IPv4]127.0.0.1/127.0.0.1:" in line


def test_http_ports_bound_the_request_head(start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    # Nothing sent: closed after the 2 s head deadline (upstream's header timeout).
    with socket.create_connection(("127.0.0.1", daemon.ports["readiness"])) as idle:
        assert closed_by_peer(idle, 10)
    # A head over 8 KiB: closed without an answer.
    with socket.create_connection(("127.0.0.1", daemon.ports["admin"])) as big:
        big.sendall(b"GET /config_dump HTTP/1.1\r\nX-Filler: " + b"a" * 9000 + b"\r\n\r\n")
        big.settimeout(10)
        try:
            answer = big.recv(100)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")
    wait_for(lambda: metric(daemon, "readiness", "request_head_timeout") == 1, 10, "head timeout counted")
    assert metric(daemon, "admin", "request_head_size") == 1
    assert daemon.ready()


def socks5_open(port, dest_port, payload=b""):
    """Greeting, request and (optionally) early payload in one write, as a pipelining client does."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", dest_port) + payload)
    reply = b""
    while len(reply) < 12:
        chunk = s.recv(12 - len(reply))
        if not chunk:
            break
        reply += chunk
    assert reply == b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6), reply
    return s


def test_socks5_keeps_pipelined_bytes_and_closes_idle_relays(start_daemon, echo_server):
    daemon = start_daemon(extra_env={"ZTUNNEL_IDLE_TIMEOUT": "500ms"})
    daemon.wait_ready()
    # Bytes sent before the upstream connected are kept and delivered first (they used to be dropped).
    with socks5_open(daemon.ports["socks5"], echo_server.port, b"early bytes") as s:
        received = b""
        while len(received) < 11:
            received += s.recv(11 - len(received))
        assert received == b"early bytes"
        # Then silence both ways: the relay is closed after the idle timeout.
        assert closed_by_peer(s, 10)
    wait_for(lambda: metric(daemon, "socks5", "idle_timeout") >= 1, 10, "idle timeout counted")


def test_a_relay_with_traffic_outlives_the_idle_timeout(start_daemon, echo_server):
    """The idle timeout counts silence, not age: bytes every 100 ms keep a relay open for longer
    than the timeout (3 s: a stall of nearly that long would be needed to close it early), and
    silence then closes it."""
    daemon = start_daemon(extra_env={"ZTUNNEL_IDLE_TIMEOUT": "3s"})
    daemon.wait_ready()
    with socks5_open(daemon.ports["socks5"], echo_server.port, b"") as s:
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            s.sendall(b"k")
            assert s.recv(1) == b"k", "the relay closed while bytes flowed"
            time.sleep(0.1)
        assert metric(daemon, "socks5", "idle_timeout") == 0
        assert closed_by_peer(s, 30)
    wait_for(lambda: metric(daemon, "socks5", "idle_timeout") >= 1, 10, "idle timeout counted")

    # A download: the server pushes a byte every 100 ms, the client only reads. The relay's
    # writes to the client count as traffic too.
    pusher = socket.socket()
    pusher.bind(("127.0.0.1", 0))
    pusher.listen(1)
    def push():
        conn, _ = pusher.accept()
        with conn:
            deadline = time.monotonic() + 4.5
            while time.monotonic() < deadline:
                conn.sendall(b"p")
                time.sleep(0.1)
            conn.sendall(b"!")
            time.sleep(60)  # then silence, until the relay closes or the test ends
    threading.Thread(target=push, daemon=True).start()
    try:
        with socks5_open(daemon.ports["socks5"], pusher.getsockname()[1], b"") as s:
            received = b""
            while not received.endswith(b"!"):
                chunk = s.recv(64)
                assert chunk, "the relay closed while the server sent"
                received += chunk
            assert len(received) > 30
            assert metric(daemon, "socks5", "idle_timeout") == 1
            assert closed_by_peer(s, 30)
    finally:
        pusher.close()


def test_connection_cap_closes_the_excess_and_keeps_serving(start_daemon):
    daemon = start_daemon(extra_env={"ZTUNNEL_MAX_CONNECTIONS": "20", "ZTUNNEL_HANDSHAKE_TIMEOUT": "60s"})
    daemon.wait_ready()
    held = [socket.create_connection(("127.0.0.1", daemon.ports["inbound"])) for _ in range(20)]
    try:
        # Connected is not accepted: wait until the NetWorker holds all 20, or the extra one below
        # could be accepted before some of them.
        def live():
            _, body = http(daemon.ports["stats"], "/metrics")
            return 'istio_tcp_sockets_open{reporter="source"} 20' in body.splitlines()
        wait_for(live, 20, "the NetWorker to hold the 20 connections")
        wait_for(daemon.ready, 10, "readiness")
        extra = socket.create_connection(("127.0.0.1", daemon.ports["inbound"]))
        with extra:
            assert closed_by_peer(extra, 10)
        wait_for(lambda: metric(daemon, "inbound", "max_connections") == 1, 10, "the cap counted")
        # Logged once per episode, however many are refused.
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", daemon.ports["inbound"])) as more:
                assert closed_by_peer(more, 10)
        wait_for(lambda: metric(daemon, "inbound", "max_connections") == 6, 10, "every refusal counted")
        assert sum("max_connections reached" in l for l in daemon.log().splitlines()) == 1
        assert daemon.ready()
    finally:
        for s in held:
            s.close()
    # Slots are released with their connections (the NetWorker sees each EOF and closes).
    def admitted():
        with socket.create_connection(("127.0.0.1", daemon.ports["inbound"])) as again:
            return not closed_by_peer(again, 0.5)
    wait_for(admitted, 20, "a slot released after the held connections closed")


def rss_kib(pid):
    return int(proc_status(pid)["VmRSS"].split()[0])


def test_ten_thousand_silent_connections_leave_readiness_and_memory_bounded(start_daemon):
    count = 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 2000), hard))
    daemon = start_daemon(extra_env={"ZTUNNEL_HANDSHAKE_TIMEOUT": "120s"})
    daemon.wait_ready()
    (worker,) = daemon.workers("net-worker")
    before = rss_kib(worker)
    held = []
    try:
        for _ in range(count):
            held.append(socket.create_connection(("127.0.0.1", daemon.ports["inbound"]), timeout=10))
        wait_for(lambda: http(daemon.ports["readiness"], "/healthz/ready")[0] == 200, 30, "readiness with 10k open")
        grown = rss_kib(worker) - before
        # The bound this test checks: at most 16 KiB of NetWorker memory per silent connection
        # (measured: see the issue note), i.e. under 160 MiB for 10,000.
        assert grown < count * 16, f"NetWorker grew {grown} KiB for {count} silent connections"
        print(f"\n{count} silent connections on 15008: NetWorker RSS +{grown} KiB ({grown * 1024 // count} bytes each)")
    finally:
        for s in held:
            s.close()


def test_socks5_half_close_while_connecting_reaches_the_upstream(start_daemon, echo_server):
    # Review finding: an EOF that arrived while the upstream was connecting was dropped, and the
    # relay waited for the idle timeout. A request-then-EOF client must see the answer and EOF.
    daemon = start_daemon()
    daemon.wait_ready()
    s = socket.create_connection(("127.0.0.1", daemon.ports["socks5"]), timeout=10)
    with s:
        s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                  + struct.pack(">H", echo_server.port) + b"whole request")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data == b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6) + b"whole request"
