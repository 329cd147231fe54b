"""A CONNECT the server never processed is sent again (RFC 9113 §8.7; ISTIO_COMPAT §5.5: a
connection that reports not-ready is evicted): the peer may refuse a stream (RST_STREAM
REFUSED_STREAM) or cut it off with a GOAWAY whose last stream id is lower, as a draining ztunnel
does. The client's connection must still reach the application, through another connection when
the first one is going away; a peer that refuses every time costs a bounded number of tries.

The peer is an HBONE server written here on Python's ssl and h2, which misbehaves on purpose."""
import os
import socket
import struct
import ssl
import threading

import pytest

h2 = pytest.importorskip("h2")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.errors  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
from daemon import free_ports, socks5_connect, wait_for  # noqa: E402
from identities import MiniCA  # noqa: E402

# The client workload (127.0.0.3) and the echo workload (127.0.0.2, HBONE) of the Envoy tests.
from test_envoy_interop import CLIENT_CONFIG as CONFIG  # noqa: E402
from test_outbound_hbone import round_trip  # noqa: E402


class MisbehavingHBONEServer:
    """Serves HBONE on 127.0.0.2:port. `plan(n)` says what to do with the n-th CONNECT (from 0):
    "refuse" (RST_STREAM REFUSED_STREAM), "goaway" (GOAWAY naming stream 0, the request left
    unanswered) or "echo" (200, then every byte back). With `goaway_first`, the first connection
    gets a GOAWAY naming stream 0 with the server's SETTINGS, before any request is read, and is
    then read to its end, or, with `goaway_first="reset"`, reset at once (SO_LINGER 0)."""

    def __init__(self, port, server_dir, plan, goaway_first=False):
        self.plan = plan
        self.goaway_first = goaway_first
        self.requests = 0
        self.connections = 0
        self.lock = threading.Lock()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.load_cert_chain(f"{server_dir}/cert-chain.pem", f"{server_dir}/key.pem")
        self.context.load_verify_locations(f"{server_dir}/root-cert.pem")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.2", port))
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                first = self.connections == 1
            threading.Thread(target=self._serve, args=(raw, first and self.goaway_first), daemon=True).start()

    def _serve(self, raw, goaway_at_once=False):
        try:
            sock = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        if goaway_at_once:
            # As a draining peer does: the connection stays up, and what the client sends on it
            # is read and ignored (h2 would refuse frames after its own GOAWAY) until it closes.
            conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=0)
            with sock:
                # Without Nagle: an abortive close drops what the kernel still holds back.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(conn.data_to_send())
                if self.goaway_first == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                try:
                    while sock.recv(65536):
                        pass
                except OSError:
                    pass
            return
        sock.sendall(conn.data_to_send())
        echoing = set()
        with sock:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    return  # frames after our GOAWAY: this connection is over
                for event in events:
                    if isinstance(event, h2.events.RequestReceived):
                        with self.lock:
                            n = self.requests
                            self.requests += 1
                        action = self.plan(n)
                        if action == "refuse":
                            conn.reset_stream(event.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
                        elif action == "goaway":
                            conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=0)
                        else:
                            conn.send_headers(event.stream_id, [(":status", "200")])
                            echoing.add(event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        if event.stream_id in echoing:
                            conn.send_data(event.stream_id, event.data)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id in echoing:
                        conn.end_stream(event.stream_id)
                try:
                    sock.sendall(conn.data_to_send())
                except OSError:
                    return

    def close(self):
        self.listener.close()


def start(start_daemon, tmp_path, plan, goaway_first=False):
    (port,) = free_ports(1)
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "client"), "client")
    ca.issue(str(tmp_path / "server"), "echo", namespace="shop")
    server = MisbehavingHBONEServer(port, str(tmp_path / "server"), plan, goaway_first)
    daemon = start_daemon(local_config=CONFIG, extra_env={
        "ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), "ZTUNNEL_HBONE_PORT": str(port)})
    daemon.wait_ready()
    wait_for(lambda: "identity available" in daemon.log(), 30, "the client identity")
    return daemon, server


def through(daemon, payload):
    """SOCKS5 from the client workload to the echo workload: (reply code, bytes echoed)."""
    sock, code = socks5_connect(daemon.ports["socks5"], 7070, "127.0.0.2", source="127.0.0.3", timeout=10)
    with sock:
        if code != 0:
            return code, b""
        return code, round_trip(sock, payload)


@pytest.mark.parametrize("first", ["refuse", "goaway"])
def test_a_connect_refused_unprocessed_is_sent_again(start_daemon, tmp_path, first):
    daemon, server = start(start_daemon, tmp_path, lambda n: first if n == 0 else "echo")
    try:
        payload = os.urandom(50_000)
        assert through(daemon, payload) == (0, payload), daemon.log()[-3000:]
        assert server.requests == 2
        # A GOAWAY retires its connection: the second try went over a new one.
        assert server.connections == (2 if first == "goaway" else 1)
        # Only the tunnel that carried the bytes is logged, without an error.
        wait_for(lambda: "direction=outbound" in daemon.log(), 10, "the access-log line")
        line = next(l for l in daemon.log().splitlines() if "connection complete" in l and "direction=outbound" in l)
        assert "error=" not in line and f"bytes_recv={len(payload)}" in line, line
    finally:
        server.close()


@pytest.mark.parametrize("then", ["open", "reset"])
def test_a_goaway_that_comes_with_the_servers_settings_sends_the_request_again(start_daemon, tmp_path, then):
    """The first connection's GOAWAY (last stream 0) arrives with the server's SETTINGS, so it
    meets a CONNECT that nghttp2 still holds queued or has just sent: either way the server never
    processed it, the connection is retired, and the CONNECT goes out again on a second one. The
    same when the server resets the connection right after its GOAWAY: the bytes that arrived
    before the reset are read first (SwiftNIO drains its input on a reset), so the GOAWAY is seen.
    (Sent with Nagle on, the server's GOAWAY waited for an ACK and its abortive close dropped it:
    then no client could know, which an earlier note took for a SwiftNIO fault.)"""
    daemon, server = start(start_daemon, tmp_path, lambda n: "echo", goaway_first=True if then == "open" else "reset")
    try:
        payload = os.urandom(20_000)
        assert through(daemon, payload) == (0, payload), daemon.log()[-3000:]
        assert server.connections == 2
        wait_for(lambda: "direction=outbound" in daemon.log(), 10, "the access-log line")
        line = next(l for l in daemon.log().splitlines() if "connection complete" in l and "direction=outbound" in l)
        assert "error=" not in line and f"bytes_recv={len(payload)}" in line, line
        # The retired connection is not offered again (pools are per event loop, so the second
        # tunnel may ride the second connection or a third one).
        assert through(daemon, b"again") == (0, b"again")
    finally:
        server.close()


def test_a_peer_that_always_refuses_costs_three_tries_then_the_connection(start_daemon, tmp_path):
    daemon, server = start(start_daemon, tmp_path, lambda n: "refuse")
    try:
        code, _ = through(daemon, b"never carried")
        assert code != 0
        assert server.requests == 3
        wait_for(lambda: "direction=outbound" in daemon.log(), 10, "the access-log line")
        line = next(l for l in daemon.log().splitlines() if "connection complete" in l and "direction=outbound" in l)
        assert "refused the stream" in line, line
        # The worker still serves: a later tunnel to a server that answers works.
        server.plan = lambda n: "echo"
        assert through(daemon, b"after") == (0, b"after")
    finally:
        server.close()
