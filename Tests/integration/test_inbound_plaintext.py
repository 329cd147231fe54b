"""Inbound plaintext capture (15006) in a network namespace of the test's own, with the REDIRECT
rule istio-cni programs (ISTIO_COMPAT §2.1): the original destination is read with
SO_ORIGINAL_DST, and the destination workload's L4 authorization policies from the local config
apply with no source identity (ISTIO_COMPAT §11, §12)."""
import os
import socket
import threading

import pytest

from daemon import http, wait_for
from netns import Netns

APP = "10.77.0.10"
CLIENT = "10.77.0.20"
LEGACY = "192.168.77.5"
NET_WORKER_UID = 65533

LOCAL_CONFIG = f"""
workloads:
- uid: test//Pod/shop/cart-1
  name: cart-1
  namespace: shop
  serviceAccount: cart
  trustDomain: cluster.local
  workloadIps: ["{APP}"]
  protocol: TCP
  authorizationPolicies: ["shop/require-identity-on-9090"]
policies:
- name: no-legacy-net
  namespace: shop
  scope: Namespace
  action: Deny
  dryRun: false
  rules:
  - - - sourceIps: ["192.168.0.0/16"]
- name: require-identity-on-9090
  namespace: shop
  scope: WorkloadSelector
  action: Deny
  dryRun: false
  rules:
  - - - notPrincipals: [!Presence []]
    - - destinationPorts: [9090]
"""


def echo_listener(address, port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(16)

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return sock


def exchange(source, port, payload=b"hello cart"):
    """From `source`, to the app's address (redirected to 15006); returns what came back."""
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect((APP, port))  # the kernel accepts into 15006's backlog whatever ztunnel decides
        data = b""
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError, OSError) as error:
            # A refused connection is closed by the proxy, possibly before our bytes went out.
            if isinstance(error, socket.timeout):
                raise
        return data


def start_captured(start_daemon, namespace, capture=APP):
    """The daemon inside the namespace, with istio-cni's REDIRECT of TCP to `capture` onto 15006
    (keyed on the NetWorker's uid instead of the mark), once it answers readiness there."""
    daemon = start_daemon(local_config=LOCAL_CONFIG, netns=namespace.name)
    namespace.run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", capture, "-m", "owner", "!", "--uid-owner",
                  str(NET_WORKER_UID), "-j", "REDIRECT", "--to-ports", str(daemon.ports["inbound_plaintext"]))

    def ready():
        try:
            return http(daemon.ports["readiness"], "/healthz/ready", timeout=2)[0] == 200
        except OSError:
            return False
    wait_for(lambda: namespace.call(ready) or daemon.proc.poll() is not None, 60, "readiness inside the namespace")
    assert daemon.proc.poll() is None, daemon.log()
    return daemon


@pytest.fixture
def namespace():
    ns = Netns(f"zt-test-{os.getpid()}")
    try:
        for address in (APP, CLIENT, LEGACY):
            ns.run("ip", "addr", "add", f"{address}/32", "dev", "lo")
        yield ns
    finally:
        ns.delete()


def test_inbound_plaintext_reads_the_original_destination_and_authorizes(start_daemon, namespace):
    daemon = start_captured(start_daemon, namespace)
    listeners = [namespace.call(echo_listener, APP, port) for port in (8080, 9090)]
    try:
        # Allowed: a source outside 192.168/16, to a port no identity is required on.
        assert namespace.call(exchange, CLIENT, 8080) == b"hello cart"
        # Denied by the namespace policy shop/no-legacy-net (source 192.168.0.0/16).
        assert namespace.call(exchange, LEGACY, 8080) == b""
        # Denied by the workload's policy: plaintext has no identity, and 9090 requires one.
        assert namespace.call(exchange, CLIENT, 9090) == b""
        log = daemon.log()
        denied = [line for line in log.splitlines() if "inbound-plaintext: connection denied" in line]
        assert len(denied) == 2, log[-3000:]
        assert "policy=shop/no-legacy-net" in denied[0] and f"{LEGACY}" in denied[0]
        assert "policy=shop/require-identity-on-9090" in denied[1]
        dump = namespace.call(lambda: http(daemon.ports["admin"], "/config_dump")[1])
        assert '"uid": "test//Pod/shop/cart-1"' in dump and '"name": "no-legacy-net"' in dump
        # Metrics: plaintext is connection_security_policy="unknown"; the refusals are DENY.
        body = namespace.call(lambda: http(daemon.ports["stats"], "/metrics")[1])
        closed = [l for l in body.splitlines() if l.startswith("istio_tcp_connections_closed_total{")]
        assert all('connection_security_policy="unknown"' in l and 'source_principal="unknown"' in l for l in closed), closed
        denied = [l for l in closed if 'response_flags="DENY"' in l]
        assert denied and denied[0].endswith(" 2"), closed
    finally:
        for listener in listeners:
            listener.close()


def test_a_policy_change_closes_live_connections_it_now_denies(start_daemon, namespace):
    daemon = start_captured(start_daemon, namespace)
    listener = namespace.call(echo_listener, APP, 8080)

    def open_live():
        s = socket.socket()
        s.settimeout(10)
        s.bind((CLIENT, 0))
        s.connect((APP, 8080))
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
        return s

    try:
        live = namespace.call(open_live)
        with live:
            # A file that does not parse changes nothing: the model in force stays (a wiped model
            # would close this connection: its workload would be gone), and a NetWorker started
            # afterwards gets the last accepted file, not the refused one.
            with open(daemon.env["LOCAL_XDS_PATH"], "w") as f:
                f.write(LOCAL_CONFIG + "unknownKey: 1\n")
            wait_for(lambda: daemon.audit_events("local_config_refused"), 30, "the bad file refused")
            assert "keeping the mesh model in force" in daemon.log()
            live.sendall(b"pong")
            assert live.recv(4) == b"pong"
            # A new DENY for the client's address: the live connection is closed, new ones refused.
            with open(daemon.env["LOCAL_XDS_PATH"], "w") as f:
                f.write(LOCAL_CONFIG + f"""- name: no-client
  namespace: shop
  scope: Namespace
  action: Deny
  dryRun: false
  rules:
  - - - sourceIps: ["{CLIENT}/32"]
""")
            wait_for(lambda: "connection closed due to policy change" in daemon.log(), 30, "the live connection re-checked")
            live.settimeout(10)
            try:
                assert live.recv(4) == b""
            except ConnectionResetError:
                pass
        line = next(l for l in daemon.log().splitlines() if "connection closed due to policy change" in l)
        assert "policy=shop/no-client" in line
        assert namespace.call(exchange, CLIENT, 8080) == b""
        denied = [l for l in daemon.log().splitlines() if "inbound-plaintext: connection denied" in l]
        assert denied and "policy=shop/no-client" in denied[-1]
        assert daemon.audit_events("local_config_applied")
    finally:
        listener.close()


def test_unknown_destinations_are_refused_not_passed_through(start_daemon, namespace):
    # Upstream drops inbound plaintext to an address no workload owns; so do we (fail closed).
    daemon = start_captured(start_daemon, namespace, capture=CLIENT)
    listener = namespace.call(echo_listener, CLIENT, 8080)
    try:
        def to_client_address():
            with socket.socket() as s:
                s.settimeout(10)
                s.connect((CLIENT, 8080))
                try:
                    s.sendall(b"x")
                    return s.recv(1)
                except OSError:
                    return b""
        assert namespace.call(to_client_address) == b""
        assert "reason=unknown destination: no workload owns 10.77.0.20" in daemon.log()
    finally:
        listener.close()
