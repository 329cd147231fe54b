"""Inbound HBONE on 15008 (ISTIO_COMPAT §5, §10): mutual TLS through a key handle, then HTTP/2
CONNECT streams to the application, authorized with the client's SPIFFE identity; refusals
answer the status codes of §5.6. The client is Python's ssl and h2."""
import hashlib
import os
import signal
import struct

import pytest

pytest.importorskip("h2")
from daemon import http, wait_for  # noqa: E402
from hbone_client import HBONEClient  # noqa: E402
from identities import MiniCA  # noqa: E402


def config(echo_port):
    # The workload's identity is a static one (from the test's own CA): 15008 presents it, and
    # the built-in CA is not asked for another.
    return f"""
workloads:
- uid: test//Pod/shop/echo-1
  name: echo-1
  namespace: shop
  serviceAccount: echo
  trustDomain: cluster.local
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  clusterId: test-cluster
  workloadName: echo
  workloadType: deployment
  canonicalName: echo
  canonicalRevision: v1
  authorizationPolicies: ["shop/only-client"]
  services:
    "shop/echo.shop.svc.cluster.local":
      80: {echo_port}
services:
- name: echo
  namespace: shop
  hostname: echo.shop.svc.cluster.local
  vips: ["/10.96.0.9"]
  ports:
    80: 0
policies:
- name: only-client
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/default/sa/client]
"""


@pytest.fixture
def hbone(start_daemon, tmp_path, echo_server):
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "client"), "client")
    ca.issue(str(tmp_path / "intruder"), "intruder")
    daemon = start_daemon(local_config=config(echo_server.port),
                          extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities")})
    daemon.wait_ready()
    wait_for(lambda: "identity available" in daemon.log(), 30, "the server identity")
    return daemon, tmp_path, echo_server


def test_connect_streams_carry_bytes_both_ways(hbone):
    daemon, tmp, echo = hbone
    client = HBONEClient(daemon.ports["inbound"], str(tmp / "client"))
    try:
        streams = [client.connect(f"127.0.0.1:{echo.port}") for _ in range(8)]
        assert client.pump(lambda: all(s in client.status for s in streams))
        assert all(client.status[s] == 200 for s in streams)
        # The 200 carries the destination workload's baggage (§5.3, §5.6).
        assert client.headers[streams[0]][b"baggage"] == (b"k8s.cluster.name=test-cluster,k8s.namespace.name=shop,"
                                                          b"k8s.deployment.name=echo,service.name=echo,service.version=v1")
        payloads = {s: os.urandom(100_000 + i) for i, s in enumerate(streams)}
        for s, payload in payloads.items():
            client.send(s, payload, end=True)
        assert client.pump(lambda: all(s in client.ended for s in streams), limit=10_000)
        for s, payload in payloads.items():
            assert hashlib.sha256(client.data[s]).digest() == hashlib.sha256(payload).digest(), s
    finally:
        client.close()
    assert "inbound: HBONE stream connected peer_identity=spiffe://cluster.local/ns/default/sa/client" in daemon.log()
    # Istio's TCP metrics (§15) and one access-log line per stream (§15.3).
    wait_for(lambda: daemon.log().count("\taccess\tconnection complete") >= 8, 10, "the access-log lines")
    lines = [l for l in daemon.log().splitlines() if "\taccess\tconnection complete" in l]
    for line in lines:
        for field in ("src.identity=spiffe://cluster.local/ns/default/sa/client", f"dst.hbone_addr=127.0.0.1:{echo.port}",
                      "dst.workload=echo-1", "dst.namespace=shop", "direction=inbound"):
            assert field in line, (field, line)
    # Inbound: bytes from the server's view, and each stream's payload went both ways.
    received = sorted(int(l.split("bytes_recv=")[1].split()[0]) for l in lines)
    assert received == sorted(len(p) for p in payloads.values())
    body = http(daemon.ports["stats"], "/metrics")[1]
    # The client connects from 127.0.0.1, which the local config gives to workload shop/echo-1.
    labels = ('reporter="destination",source_workload="echo",source_canonical_service="echo",'
              'source_canonical_revision="v1",source_workload_namespace="shop",'
              'source_principal="spiffe://cluster.local/ns/default/sa/client"')
    opened = [l for l in body.splitlines() if l.startswith("istio_tcp_connections_opened_total{" + labels)]
    assert opened and opened[0].endswith(" 8"), body[-3000:]
    assert 'connection_security_policy="mutual_tls"' in opened[0] and 'destination_workload_namespace="shop"' in opened[0]
    received = [l for l in body.splitlines() if l.startswith("istio_tcp_received_bytes_total{" + labels)]
    assert int(received[0].rsplit(" ", 1)[1]) == sum(len(p) for p in payloads.values())
    sent = [l for l in body.splitlines() if l.startswith("istio_tcp_sent_bytes_total{" + labels)]
    assert int(sent[0].rsplit(" ", 1)[1]) == sum(len(p) for p in payloads.values())


def test_the_server_sends_no_session_tickets(hbone):
    """Resumption is off (§5.1: every connection is a full mutual-TLS handshake), so 15008 sends
    no TLS 1.3 NewSessionTicket: a ticket no client can use costs the server a session copy and
    a key derivation per handshake. The client has read past the handshake (a CONNECT answered),
    so a ticket sent would have been taken."""
    daemon, tmp, echo = hbone
    client = HBONEClient(daemon.ports["inbound"], str(tmp / "client"))
    try:
        stream = client.connect(f"127.0.0.1:{echo.port}")
        assert client.pump(lambda: stream in client.status) and client.status[stream] == 200
        assert client.sock.version() == "TLSv1.3"
        session = client.sock.session
        assert session is not None and not session.has_ticket, "the server sent a session ticket"
    finally:
        client.close()


def test_refusals_answer_the_status_of_5_6(hbone):
    daemon, tmp, echo = hbone
    client = HBONEClient(daemon.ports["inbound"], str(tmp / "client"))
    try:
        cases = {
            client.connect(f"127.0.0.1:{echo.port}", method="GET"): 400,  # not CONNECT
            client.connect("not-an-authority"): 400,
            client.connect(f"127.0.0.2:{echo.port}"): 400,  # not the address this connection arrived on
            client.connect(f"127.0.0.1:{daemon.ports['inbound']}"): 503,  # one of this proxy's ports
            client.connect("127.0.0.1:1"): 503,  # nothing listens there
            client.connect("unknown.shop.svc.cluster.local:80"): 503,  # no service by that name
            client.connect("echo.shop.svc.cluster.local:81"): 503,  # the service has no such port
        }
        assert client.pump(lambda: all(s in client.status or s in client.reset for s in cases))
        for stream, status in cases.items():
            assert client.status.get(stream) == status, (stream, client.status, client.reset)
    finally:
        client.close()
    # A client identity the policy does not allow: 401.
    intruder = HBONEClient(daemon.ports["inbound"], str(tmp / "intruder"))
    try:
        stream = intruder.connect(f"127.0.0.1:{echo.port}")
        assert intruder.pump(lambda: stream in intruder.status)
        assert intruder.status[stream] == 401
    finally:
        intruder.close()
    assert "shop/only-client" in daemon.log() or "allow policies exist" in daemon.log()
    body = http(daemon.ports["stats"], "/metrics")[1]
    denied = [l for l in body.splitlines() if l.startswith("istio_tcp_connections_closed_total{") and 'response_flags="DENY"' in l]
    assert denied and 'source_principal="spiffe://cluster.local/ns/default/sa/intruder"' in denied[0]


def test_bytes_sent_on_refused_streams_are_dropped_and_the_window_given_back(hbone):
    """Review finding: data on an answered (refused) stream was kept and its flow-control window
    never given back; 16 MiB of it stalled every stream of the connection. 20 MiB are sent on
    refused streams here, then a new stream must still carry its bytes."""
    daemon, tmp, echo = hbone
    client = HBONEClient(daemon.ports["inbound"], str(tmp / "client"))
    try:
        chunk = b"x" * 1_000_000
        for _ in range(5):
            refused = client.connect("127.0.0.1:1")  # nothing listens: 503
            assert client.pump(lambda: refused in client.status)
            for _ in range(4):
                client.send(refused, chunk)
        stream = client.connect(f"127.0.0.1:{echo.port}")
        assert client.pump(lambda: client.status.get(stream) == 200)
        client.send(stream, b"still flowing", end=True)
        assert client.pump(lambda: stream in client.ended)
        assert client.data[stream] == b"still flowing"
    finally:
        client.close()


def test_a_silent_hbone_connection_meets_the_idle_timeout(start_daemon, tmp_path, echo_server):
    """Review finding: after the handshake nothing ended a silent authenticated connection."""
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "client"), "client")
    daemon = start_daemon(local_config=config(echo_server.port),
                          extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), "ZTUNNEL_IDLE_TIMEOUT": "500ms"})
    daemon.wait_ready()
    wait_for(lambda: "identity available" in daemon.log(), 30, "the server identity")
    client = HBONEClient(daemon.ports["inbound"], str(tmp_path / "client"))
    try:
        client.sock.settimeout(10)
        # Our SETTINGS arrive, then nothing: the proxy closes after 500 ms of silence (if it did
        # not, recv would time out and fail the test).
        while True:
            try:
                chunk = client.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
        assert 'bound="idle_timeout"' in http(daemon.ports["stats"], "/metrics")[1]
    finally:
        client.close()


def start_hbone(start_daemon, tmp_path, echo_server, **env):
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "client"), "client")
    ca.issue(str(tmp_path / "intruder"), "intruder")
    daemon = start_daemon(local_config=config(echo_server.port),
                          extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), **env})
    daemon.wait_ready()
    wait_for(lambda: "identity available" in daemon.log(), 30, "the server identity")
    return daemon


def test_keepalive_pings_and_a_peer_that_stops_answering_is_cut(start_daemon, tmp_path, echo_server):
    """§5.2: the server PINGs every interval (here 300 ms); a client that answers stays
    connected, one that stops reading is torn down after two unanswered intervals."""
    daemon = start_hbone(start_daemon, tmp_path, echo_server, ZTUNNEL_HBONE_KEEPALIVE="300ms")
    answering = HBONEClient(daemon.ports["inbound"], str(tmp_path / "client"))
    silent = HBONEClient(daemon.ports["inbound"], str(tmp_path / "client"))
    try:
        # The answering client reads (h2 ACKs each PING) and sees PINGs keep coming.
        assert answering.pump(lambda: answering.pings >= 4, limit=100)
        # The silent one stops reading after its handshake: its PING goes unanswered.
        wait_for(lambda: "did not answer a PING" in daemon.log(), 10, "the silent peer's teardown")
        stream = answering.connect(f"127.0.0.1:{echo_server.port}")
        assert answering.pump(lambda: stream in answering.status) and answering.status[stream] == 200
        assert daemon.log().count("did not answer a PING") == 1
    finally:
        answering.close()
        silent.close()


def test_drain_sends_goaway_and_lets_open_streams_finish(start_daemon, tmp_path, echo_server):
    """§20: on SIGTERM the NetWorker stops accepting, sends GOAWAY on HBONE connections, and a
    stream already open keeps carrying bytes until it ends."""
    daemon = start_hbone(start_daemon, tmp_path, echo_server, CONNECTION_TERMINATION_DEADLINE="30s")
    client = HBONEClient(daemon.ports["inbound"], str(tmp_path / "client"))
    try:
        stream = client.connect(f"127.0.0.1:{echo_server.port}")
        assert client.pump(lambda: stream in client.status) and client.status[stream] == 200
        daemon.proc.send_signal(signal.SIGTERM)
        assert client.pump(lambda: client.goaway is not None, limit=100)
        assert client.goaway == (0, stream)  # NO_ERROR, and this stream is still served
        # Python's h2 refuses to send after a GOAWAY, though HTTP/2 allows it on streams up to
        # the last stream id: the DATA frame (END_STREAM) is written by hand, and the answer read
        # as raw frames until the server closes the connection.
        payload = b"after goaway"
        client.sock.sendall(struct.pack(">I", len(payload))[1:] + bytes([0, 1]) + struct.pack(">I", stream) + payload)
        buffer, echoed, ended = b"", b"", False
        while chunk := client.sock.recv(65536):
            buffer += chunk
            while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                length, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
                frame_stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                if kind == 0 and frame_stream == stream:
                    echoed += buffer[9:9 + length]
                    ended = ended or bool(flags & 1)
                buffer = buffer[9 + length:]
        assert echoed == payload and ended  # then the server closed: its last stream was done
    finally:
        client.close()
    assert daemon.proc.wait(timeout=30) == 0


def test_a_huge_header_block_resets_that_stream_only(hbone):
    """A CONNECT whose header block is over the 64 KiB the server advertises is reset; the
    connection and its other streams carry on."""
    daemon, tmp, echo = hbone
    client = HBONEClient(daemon.ports["inbound"], str(tmp / "client"))
    try:
        huge = client.connect(f"127.0.0.1:{echo.port}", extra_headers=[("x-padding", "a" * (70 * 1024))])
        assert client.pump(lambda: huge in client.reset or huge in client.status)
        assert huge in client.reset and huge not in client.status
        good = client.connect(f"127.0.0.1:{echo.port}")
        assert client.pump(lambda: good in client.status) and client.status[good] == 200
        client.send(good, b"still here", end=True)
        assert client.pump(lambda: good in client.ended) and client.data[good] == b"still here"
    finally:
        client.close()


def test_a_hostname_authority_reaches_the_service_port_of_this_workload(hbone):
    """§10 step 4: `service-hostname:port` is resolved through this workload's endpoint port map
    for the service (80 -> the echo port) and connects to the address the connection arrived on."""
    daemon, tmp, echo = hbone
    client = HBONEClient(daemon.ports["inbound"], str(tmp / "client"))
    try:
        stream = client.connect("echo.shop.svc.cluster.local:80")
        assert client.pump(lambda: stream in client.status) and client.status[stream] == 200, client.status
        client.send(stream, b"by name", end=True)
        assert client.pump(lambda: stream in client.ended) and client.data[stream] == b"by name"
    finally:
        client.close()


def test_a_waypoint_behind_ztunnel_is_asked_for_what_it_is_the_waypoint_of(start_daemon, tmp_path, echo_server):
    """§10 step 3, the "sandwich": echo-1 is the waypoint of service reviews (by address) and of
    workload ratings; a CONNECT naming reviews' VIP or ratings' address arrives on echo-1's
    address and is delivered there, on the requested port. Any other address is still refused
    (ip mismatch)."""
    text = config(echo_server.port).replace('''services:
- name: echo''', '''- uid: test//Pod/shop/ratings-1
  name: ratings-1
  namespace: shop
  workloadIps: ["127.0.0.7"]
  protocol: HBONE
  waypoint: {destination: "/127.0.0.1", hboneMtlsPort: 15008}
- uid: test//Pod/shop/details-1
  name: details-1
  namespace: shop
  workloadIps: ["127.0.0.8"]
  protocol: HBONE
services:
- name: reviews
  namespace: shop
  hostname: reviews.shop.svc.cluster.local
  vips: ["/10.96.0.20"]
  ports:
    9080: 9080
  waypoint: {destination: "/127.0.0.1", hboneMtlsPort: 15008}
- name: echo''', 1)
    assert "reviews" in text
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "client"), "client")
    daemon = start_daemon(local_config=text, extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities")})
    daemon.wait_ready()
    wait_for(lambda: "identity available" in daemon.log(), 30, "the server identity")
    client = HBONEClient(daemon.ports["inbound"], str(tmp_path / "client"))
    try:
        cases = {
            client.connect(f"10.96.0.20:{echo_server.port}"): 200,  # a service it is the waypoint of
            client.connect(f"127.0.0.7:{echo_server.port}"): 200,  # a workload it is the waypoint of
            client.connect(f"127.0.0.8:{echo_server.port}"): 400,  # a workload without a waypoint
            client.connect(f"10.96.0.9:{echo_server.port}"): 400,  # a service without a waypoint
        }
        assert client.pump(lambda: all(s in client.status or s in client.reset for s in cases))
        for stream, status in cases.items():
            assert client.status.get(stream) == status, (stream, client.status, client.reset)
        delivered = [s for s, status in cases.items() if status == 200]
        for s in delivered:
            client.send(s, b"via the waypoint", end=True)
        assert client.pump(lambda: all(s in client.ended for s in delivered))
        assert all(client.data[s] == b"via the waypoint" for s in delivered)
    finally:
        client.close()
    assert "ip mismatch: 127.0.0.8 is not the address this connection arrived on" in daemon.log()


@pytest.mark.parametrize("info", [True, False])
def test_authorization_decisions_are_logged_at_info_with_authz_policy_info_logging(start_daemon, tmp_path, echo_server, info):
    """AUTHZ_POLICY_INFO_LOGGING=true (§18): each inbound decision is logged at info, with its
    outcome and, for a denial, the policy; without it, only at debug (not in this log)."""
    daemon = start_hbone(start_daemon, tmp_path, echo_server, **({"AUTHZ_POLICY_INFO_LOGGING": "true"} if info else {}))
    tmp, echo = tmp_path, echo_server
    for client_dir in ("client", "intruder"):
        client = HBONEClient(daemon.ports["inbound"], str(tmp / client_dir))
        try:
            stream = client.connect(f"127.0.0.1:{echo.port}")
            assert client.pump(lambda: stream in client.status)
        finally:
            client.close()
    if info:
        wait_for(lambda: daemon.log().count("authorization decision") >= 2, 10, "both decisions")
        lines = [l for l in daemon.log().splitlines() if "authorization decision" in l]
        assert all("\tinfo\t" in l for l in lines), lines
        assert any("src.identity=spiffe://cluster.local/ns/default/sa/client" in l and "decision=allow" in l for l in lines)
        assert any("sa/intruder" in l and "decision=deny" in l and "policy=none" in l for l in lines), lines
    else:
        wait_for(lambda: "rbac" in daemon.log().lower() or "denied" in daemon.log(), 10, "the denial")
        assert "authorization decision" not in daemon.log()


@pytest.mark.parametrize("env,stream_window,connection_window,frame_size", [
    ({}, 4 << 20, 16 << 20, 1 << 20),
    ({"HTTP2_STREAM_WINDOW_SIZE": "1048576", "HTTP2_CONNECTION_WINDOW_SIZE": "2097152", "HTTP2_FRAME_SIZE": "32768"},
     1 << 20, 2 << 20, 32768),
])
def test_http2_settings_are_upstreams_and_follow_their_variables(start_daemon, tmp_path, echo_server, env, stream_window,
                                                                 connection_window, frame_size):
    """§5.2: 15008 advertises a 4 MiB stream window, a 16 MiB connection window and 1 MiB frames,
    or what HTTP2_STREAM_WINDOW_SIZE, HTTP2_CONNECTION_WINDOW_SIZE and HTTP2_FRAME_SIZE say; a
    client sending frames that large is served, its bytes intact."""
    daemon = start_hbone(start_daemon, tmp_path, echo_server, **env)
    client = HBONEClient(daemon.ports["inbound"], str(tmp_path / "client"))
    try:
        stream = client.connect(f"127.0.0.1:{echo_server.port}")
        assert client.pump(lambda: stream in client.status) and client.status[stream] == 200
        settings = client.conn.remote_settings
        assert settings.initial_window_size == stream_window and settings.max_frame_size == frame_size
        assert client.conn.outbound_flow_control_window == connection_window
        payload = os.urandom(3 * frame_size + 17)
        client.send(stream, payload, end=True)  # frames of up to frame_size each
        assert client.pump(lambda: stream in client.ended, limit=10_000)
        assert hashlib.sha256(client.data[stream]).digest() == hashlib.sha256(payload).digest()
    finally:
        client.close()


def test_enable_response_baggage_false_leaves_the_baggage_off_the_200(start_daemon, tmp_path, echo_server):
    """ENABLE_RESPONSE_BAGGAGE=false (§18): the CONNECT's 200 carries no `baggage` (with it, the
    destination's: test_connect_streams_carry_bytes_both_ways); the stream is served as usual."""
    daemon = start_hbone(start_daemon, tmp_path, echo_server, ENABLE_RESPONSE_BAGGAGE="false")
    client = HBONEClient(daemon.ports["inbound"], str(tmp_path / "client"))
    try:
        stream = client.connect(f"127.0.0.1:{echo_server.port}")
        assert client.pump(lambda: stream in client.status) and client.status[stream] == 200
        assert b"baggage" not in client.headers[stream], client.headers[stream]
        client.send(stream, b"no baggage", end=True)
        assert client.pump(lambda: stream in client.ended) and client.data[stream] == b"no baggage"
    finally:
        client.close()
