"""A workload behind a PROXY application tunnel (ISTIO_COMPAT §5.7, §10 step 3): 15008 delivers
each stream to the tunnel's port with a PROXY protocol v2 header first, sent at once, that names
the HBONE client (address and SPIFFE identity) and the target it asked for; the target need not
be the address the connection arrived on. Outside in-pod mode (here, local mode) the stream goes
to the workload's address, never to ztunnel's own loopback (LOCALHOST_APP_TUNNEL applies to a
pod's loopback only). In in-pod mode the stream reaches the pod's own 127.0.0.1.

The application here parses the header itself, from haproxy's proxy-protocol.txt (section 2.2),
and echoes what follows it."""
import ipaddress
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

pytest.importorskip("h2")
from daemon import wait_for  # noqa: E402
from hbone_client import HBONEClient  # noqa: E402
from identities import MiniCA  # noqa: E402
from test_inpod import box, certificates_available, cni, enrol, wait_ready  # noqa: E402,F401 (fixtures)
from test_inpod_mesh import start_node, wait_up  # noqa: E402
from test_outbound_hbone import round_trip  # noqa: E402

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
POD_IP = "127.0.0.2"  # the workload's address; 15008 listens on every address


def parse_v2(sock):
    """Reads one PROXY v2 header from `sock`: (source, destination, {tlv type: value})."""
    def exactly(count):
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise EOFError("connection closed inside the PROXY header")
            data += chunk
        return data
    fixed = exactly(16)
    assert fixed[:12] == SIGNATURE, fixed
    assert fixed[12] == 0x21, "version 2, command PROXY"
    family = fixed[13]
    length = struct.unpack("!H", fixed[14:16])[0]
    body = exactly(length)
    if family == 0x11:  # TCP over IPv4
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
        rest = body[12:]
    else:
        assert family == 0x21, f"TCP over IPv6, not {family:#x}"
        src, dst = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
        rest = body[36:]
    tlvs = {}
    while rest:
        kind, size = rest[0], struct.unpack("!H", rest[1:3])[0]
        tlvs[kind] = rest[3:3 + size]
        rest = rest[3 + size:]
    return (str(src), sport), (str(dst), dport), tlvs


class ProxyApp:
    """Listens on `host`:port; records each connection's header and the address it arrived on,
    then echoes the bytes after the header."""

    def __init__(self, host, port=0, greeting=b""):
        self.greeting = greeting
        self.server = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((host, port))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.seen = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            try:
                header = parse_v2(conn)
            except (EOFError, AssertionError) as error:
                self.seen.append(("bad header", str(error)))
                return
            self.seen.append((conn.getsockname()[0], header))
            try:
                if self.greeting:
                    conn.sendall(self.greeting)
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
            except OSError:
                return  # the stream was reset: nothing more to echo

    def close(self):
        self.server.close()


def config(app_port):
    return f"""
workloads:
- uid: test//Pod/mesh/waypoint-1
  name: waypoint-1
  namespace: mesh
  serviceAccount: waypoint
  trustDomain: cluster.local
  workloadIps: ["{POD_IP}"]
  protocol: HBONE
  applicationTunnel:
    protocol: PROXY
    port: {app_port}
  services:
    "mesh/echo.mesh.svc.cluster.local":
      80: 8080
services:
- name: echo
  namespace: mesh
  hostname: echo.mesh.svc.cluster.local
  vips: ["/fd00::9", "/10.96.0.9"]
  ports:
    80: 8080
"""


@pytest.fixture
def apps():
    # The same port on loopback and on the pod IP: which one a stream reaches shows where
    # 15008 delivered it.
    loopback = ProxyApp("127.0.0.1")
    pod = ProxyApp(POD_IP, loopback.port)
    yield loopback, pod
    loopback.close()
    pod.close()


def start(start_daemon, tmp_path, app_port, **env):
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "waypoint"), "waypoint", namespace="mesh")
    ca.issue(str(tmp_path / "client"), "client")
    daemon = start_daemon(local_config=config(app_port), hbone_wildcard=True,
                          extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), **env})
    daemon.wait_ready()
    wait_for(lambda: "identity available" in daemon.log(), 30, "the waypoint identity")
    return daemon


def carry(daemon, tmp_path, authority, payload):
    client = HBONEClient(daemon.ports["inbound"], str(tmp_path / "client"), host=POD_IP)
    try:
        local_port = client.sock.getsockname()[1]
        stream = client.connect(authority)
        assert client.pump(lambda: stream in client.status) and client.status[stream] == 200, client.status
        client.send(stream, payload, end=True)
        assert client.pump(lambda: stream in client.ended)
        return local_port, client.data[stream]
    finally:
        client.close()


def test_an_address_target_reaches_the_tunnel_port_after_a_proxy_header(start_daemon, tmp_path, apps):
    loopback, pod = apps
    daemon = start(start_daemon, tmp_path, loopback.port)
    # 10.96.0.9 is not the address the connection arrives on: allowed, since the header says it.
    client_port, echoed = carry(daemon, tmp_path, "10.96.0.9:80", b"hello waypoint")
    assert echoed == b"hello waypoint"  # the header went to the application only, first
    assert loopback.seen == []  # local mode: not ztunnel's own loopback
    assert len(pod.seen) == 1, pod.seen
    arrived_on, (source, destination, tlvs) = pod.seen[0]
    assert arrived_on == POD_IP
    # The HBONE client's own address (the test's socket to 127.0.0.2 comes from 127.0.0.1).
    assert source == ("127.0.0.1", client_port)
    assert destination == ("10.96.0.9", 80)
    assert tlvs == {0xD0: b"spiffe://cluster.local/ns/default/sa/client"}


@pytest.mark.skipif(not socket.has_ipv6 or not __import__("os").path.exists("/proc/net/if_inet6"), reason="no IPv6 on this host")
def test_over_ipv6_the_header_names_ipv6_addresses(start_daemon, tmp_path):
    """The same tunnel with IPv6 on both sides: a workload at ::1, an HBONE client from ::1 and
    an IPv6 target. The header is TCP over IPv6 (family 0x21) with both addresses."""
    app = ProxyApp("::1")
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "waypoint"), "waypoint", namespace="mesh")
    ca.issue(str(tmp_path / "client"), "client")
    daemon = start_daemon(local_config=config(app.port).replace(f'workloadIps: ["{POD_IP}"]', 'workloadIps: ["::1"]'),
                          hbone_wildcard=True, extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities")})
    try:
        daemon.wait_ready()
        wait_for(lambda: "identity available" in daemon.log(), 30, "the waypoint identity")
        client = HBONEClient(daemon.ports["inbound"], str(tmp_path / "client"), host="::1")
        try:
            client_port = client.sock.getsockname()[1]
            stream = client.connect("[fd00::9]:80")
            assert client.pump(lambda: stream in client.status) and client.status[stream] == 200, (client.status, daemon.log()[-2000:])
            client.send(stream, b"over six", end=True)
            assert client.pump(lambda: stream in client.ended) and client.data[stream] == b"over six"
        finally:
            client.close()
        assert len(app.seen) == 1, app.seen
        arrived_on, (source, destination, tlvs) = app.seen[0]
        assert arrived_on == "::1"
        assert source == ("::1", client_port)
        assert destination == ("fd00::9", 80)
        assert tlvs == {0xD0: b"spiffe://cluster.local/ns/default/sa/client"}
    finally:
        app.close()


def test_a_hostname_target_names_the_services_ipv4_vip(start_daemon, tmp_path, apps):
    _, pod = apps
    daemon = start(start_daemon, tmp_path, pod.port)
    _, echoed = carry(daemon, tmp_path, "echo.mesh.svc.cluster.local:80", b"by name")
    assert echoed == b"by name"
    _, (_, destination, _) = pod.seen[0]
    assert destination == ("10.96.0.9", 80)  # IPv4 preferred over fd00::9; the requested port


def test_an_application_that_speaks_first_gets_the_header_at_once(start_daemon, tmp_path):
    """Server-speaks-first protocols (SMTP, MySQL, SSH): the header must not wait for the
    client's first bytes, or both sides wait for each other."""
    app = ProxyApp(POD_IP, greeting=b"220 ready\r\n")
    try:
        daemon = start(start_daemon, tmp_path, app.port)
        client = HBONEClient(daemon.ports["inbound"], str(tmp_path / "client"), host=POD_IP)
        try:
            stream = client.connect(f"{POD_IP}:25")
            assert client.pump(lambda: stream in client.status) and client.status[stream] == 200, client.status
            assert client.pump(lambda: client.data.get(stream, b"") == b"220 ready\r\n", limit=5), client.data
            _, (_, destination, _) = app.seen[0]
            assert destination == (POD_IP, 25)
        finally:
            client.close()
    finally:
        app.close()


# -- in-pod mode: the pod's own loopback ------------------------------------------------------

# Run inside the tunnelled pod, on its loopback: reads the PROXY header, answers one line
# "arrived-on src-ip src-port dst-ip dst-port identity", then echoes.
_POD_APP = textwrap.dedent("""
    import socket, struct, sys
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(sys.argv[1])))
    server.listen(8)
    while True:
        conn, _ = server.accept()
        with conn:
            head = b""
            while len(head) < 16:
                head += conn.recv(16 - len(head))
            length = struct.unpack("!H", head[14:16])[0]
            body = b""
            while len(body) < length:
                body += conn.recv(length - len(body))
            assert head[:12] == b"\\r\\n\\r\\n\\x00\\r\\nQUIT\\n" and head[12] == 0x21 and head[13] == 0x11
            src, dst = socket.inet_ntoa(body[0:4]), socket.inet_ntoa(body[4:8])
            sport, dport = struct.unpack("!HH", body[8:12])
            ident = body[15:15 + struct.unpack("!H", body[13:15])[0]].decode() if len(body) > 12 and body[12] == 0xD0 else "-"
            conn.sendall(f"{conn.getsockname()[0]} {src} {sport} {dst} {dport} {ident}\\n".encode())
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
""")


def test_in_pod_mode_a_tunnelled_stream_reaches_the_pods_own_loopback(box, cni, start_daemon):
    """§5.7 with LOCALHOST_APP_TUNNEL (default): pod a's connection to pod b (captured, carried over
    HBONE) is delivered on b's own 127.0.0.1 at the tunnel's port, after a header naming a (its pod
    IP and identity) and the address a asked for."""
    a, b, _ = box.pods
    lines = ["workloads:"]
    for pod in box.pods:
        lines += box.workload_yaml(pod)
        if pod is b:
            lines += ["  applicationTunnel:", "    protocol: PROXY", "    port: 9000"]
    daemon = start_node(start_daemon, cni, "\n".join(lines) + "\nservices: []\npolicies: []\n")
    b.spawn(sys.executable, "-u", "-c", _POD_APP, "9000", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    enrol(cni, box.pods)
    wait_ready(daemon)
    wait_up(daemon, box.pods)
    wait_for(lambda: certificates_available(daemon, box.pods), 30, "every pod's certificate")
    wait_for(lambda: 9000 in b.listeners(), 10, "the application on b's loopback")
    with a.connect(b.ip, 8080) as s:
        received = round_trip(s, b"through the tunnel")
    first, _, rest = received.partition(b"\n")
    arrived_on, src, _sport, dst, dport, identity = first.decode().split()
    assert arrived_on == "127.0.0.1" and src == a.ip and (dst, dport) == (b.ip, "8080"), first
    assert identity == a.identity and rest == b"through the tunnel", received
