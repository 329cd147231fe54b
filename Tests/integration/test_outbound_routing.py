"""Outbound routing from the local config's mesh model (ISTIO_COMPAT §9), through SOCKS5 on
loopback: a service VIP is sent to an endpoint on its target port, a workload that speaks HBONE
is refused when there is no source identity to tunnel with (never sent in plaintext), and a
service with no healthy endpoint is refused. Tunnels themselves: test_outbound_hbone.py."""
from daemon import http, socks5_connect, wait_for


def config(echo_port):
    return f"""
workloads:
- uid: test//Pod/shop/echo-1
  name: echo-1
  namespace: shop
  workloadIps: ["127.0.0.1"]
  protocol: TCP
  services:
    "shop/echo.shop.svc.cluster.local":
      80: {echo_port}
- uid: test//Pod/shop/secure-1
  name: secure-1
  namespace: shop
  serviceAccount: secure
  trustDomain: cluster.local
  workloadIps: ["10.88.0.7"]
  protocol: HBONE
  services:
    "shop/secure.shop.svc.cluster.local":
      443: 8443
- uid: test//Pod/shop/down-1
  name: down-1
  namespace: shop
  workloadIps: ["10.88.0.8"]
  status: Unhealthy
  services:
    "shop/down.shop.svc.cluster.local":
      80: 8080
services:
- name: echo
  namespace: shop
  hostname: echo.shop.svc.cluster.local
  vips: ["/10.96.0.1"]
  ports: {{80: 0}}
- name: secure
  namespace: shop
  hostname: secure.shop.svc.cluster.local
  vips: ["/10.96.0.2"]
  ports: {{443: 8443}}
- name: down
  namespace: shop
  hostname: down.shop.svc.cluster.local
  vips: ["/10.96.0.3"]
  ports: {{80: 8080}}
"""


def test_services_route_to_endpoints_and_hbone_is_never_sent_in_plaintext(start_daemon, echo_server):
    daemon = start_daemon(local_config=config(echo_server.port))
    daemon.wait_ready()
    # The VIP is never contacted: the NetWorker connects to the endpoint (127.0.0.1:<echo>).
    sock, code = socks5_connect(daemon.ports["socks5"], 80, dest_host="10.96.0.1")
    with sock:
        assert code == 0
        sock.sendall(b"through the service")
        assert sock.recv(100) == b"through the service"
    # An HBONE workload behind a VIP, for a client whose workload has no identity (no trust
    # domain or service account) to tunnel with: refused (host unreachable), never plaintext.
    sock, code = socks5_connect(daemon.ports["socks5"], 443, dest_host="10.96.0.2")
    sock.close()
    assert code == 4
    # No healthy endpoint: refused.
    sock, code = socks5_connect(daemon.ports["socks5"], 80, dest_host="10.96.0.3")
    sock.close()
    assert code == 4
    log = daemon.log()
    assert "source workload test//Pod/shop/echo-1 has no identity" in log
    assert "no healthy upstream for shop/down.shop.svc.cluster.local:80" in log
    # Outbound telemetry (§15): reporter source, the service and the endpoint's workload.
    wait_for(lambda: "\taccess\tconnection complete" in daemon.log(), 10, "the access line")
    line = next(l for l in daemon.log().splitlines() if "\taccess\tconnection complete" in l)
    for field in ("direction=outbound", "dst.service=echo.shop.svc.cluster.local", "dst.workload=echo-1",
                  f"dst.addr=127.0.0.1:{echo_server.port}", "bytes_sent=19", "bytes_recv=19"):
        assert field in line, (field, line)
    body = http(daemon.ports["stats"], "/metrics")[1]
    opened = [l for l in body.splitlines() if l.startswith('istio_tcp_connections_opened_total{reporter="source"')]
    assert opened and 'destination_service="echo.shop.svc.cluster.local"' in opened[0], body[-2000:]
    assert 'destination_service_name="echo"' in opened[0] and 'connection_security_policy="unknown"' in opened[0]


def test_an_address_inside_a_cidr_vip_reaches_the_service(start_daemon, echo_server):
    """§9 step 2: a service with a CIDR VIP (here 10.97.0.0/16, from the local config's
    "network/ip/length" form) gets connections to any address inside it when no exact VIP
    matches; /config_dump lists it under `cidrVips`."""
    text = config(echo_server.port).replace('''  vips: ["/10.96.0.1"]''', '''  vips: ["/10.96.0.1", "/10.97.0.0/16"]''', 1)
    assert "/10.97.0.0/16" in text
    daemon = start_daemon(local_config=text)
    daemon.wait_ready()
    for address in ("10.97.3.4", "10.97.255.1"):
        sock, code = socks5_connect(daemon.ports["socks5"], 80, dest_host=address)
        with sock:
            assert code == 0, daemon.log()[-2000:]
            sock.sendall(b"inside the block")
            assert sock.recv(100) == b"inside the block"
    wait_for(lambda: daemon.log().count("\taccess\tconnection complete") >= 2, 10, "the access lines")
    lines = [l for l in daemon.log().splitlines() if "\taccess\tconnection complete" in l]
    assert all("dst.service=echo.shop.svc.cluster.local" in l and f"dst.addr=127.0.0.1:{echo_server.port}" in l for l in lines), lines
    (echo,) = [s for s in daemon.config_dump()["services"] if s["name"] == "echo"]
    assert echo["cidrVips"] == ["/10.97.0.0/16"] and echo["vips"] == ["/10.96.0.1"]
    # The exact VIP still routes as before (addresses outside the block: RouterTests).
    sock, code = socks5_connect(daemon.ports["socks5"], 80, dest_host="10.96.0.1")
    with sock:
        assert code == 0
        sock.sendall(b"exact")
        assert sock.recv(100) == b"exact"
