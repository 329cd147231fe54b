"""Mesh in a box, the remaining cases of issue 9 (ISTIO_COMPAT §2, §2.1, §8, §10-§12, §15.3, §16,
§20): inbound plaintext on 15006 from an unenrolled client, an L4 deny policy, two nodes (two
daemons, one CA) with cross-node HBONE, an IPv4-only pod, NetWorker and CertWorker kill -9, and a
daemon restart re-adopting the pods from the CNI's replay.

Reuses test_inpod's fixtures and helpers. Each test is independent: its own namespaces, ZDS
socket(s) and daemon(s), removed by name/PID in fixtures (also on failure); the client loops run
on threads that are stopped and joined in `finally`.
"""
import os
import signal
import socket
import threading
import time

import pytest

from cni_double import CniDouble
from daemon import wait_for
from identities import MiniCA
from mesh_box import INBOUND_HBONE
from netns import enter
from test_inpod import (access_lines, box, certificates_available, cni, enrol, listener_inodes,  # noqa: F401
                        not_serving, serving, wait_ready, workload_state)



# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture
def cni_b():
    """A second node agent (node-b's), its own INPOD_UDS."""
    double = CniDouble()
    double.start()
    yield double
    double.stop()


@pytest.fixture
def cacerts(tmp_path):
    """A plugged-in CA (Istio cacerts layout) that several daemons share, so they trust each other."""
    directory = str(tmp_path / "cacerts")
    MiniCA().write_cacerts(directory)
    return directory


# -- helpers -----------------------------------------------------------------------------------

def mesh_config(box, pods=None, nodes=None, policies=None, extra_policies=""):
    """LOCAL_XDS_PATH YAML: `pods` (default all) as HBONE workloads, each on nodes[key] (default
    the box's node); `policies`: {pod key: [policy keys]} for authorizationPolicies."""
    nodes = nodes or {}
    policies = policies or {}
    lines = ["workloads:"]
    for pod in pods if pods is not None else box.pods:
        lines += box.workload_yaml(pod, nodes.get(pod.key))
        if pod.key in policies:
            keys = ", ".join(f'"{k}"' for k in policies[pod.key])
            lines.append(f"  authorizationPolicies: [{keys}]")
    lines.append("services: []")
    lines.append("policies:" + ("\n" + extra_policies.strip("\n") if extra_policies.strip() else " []"))
    return "\n".join(lines) + "\n"


def start_node(start_daemon, cni, config, node="node-a", **env):
    daemon = start_daemon(local_config=config, extra_env={
        "INPOD_UDS": cni.path, "NODE_NAME": node, "UNSTABLE_ENABLE_SOCKS5": "false", **env})
    wait_for(lambda: cni.connected or daemon.proc.poll() is not None, 60, "the daemon's ZDS connection")
    assert daemon.proc.poll() is None, f"the daemon exited:\n{daemon.log()[-4000:]}"
    return daemon


def wait_up(daemon, pods, timeout=30):
    for pod in pods:
        wait_for(lambda: (workload_state(daemon).get(pod.uid) or {}).get("state") == "Up", timeout,
                 f"{pod.name} Up in workloadState")
        wait_for(lambda: serving(pod), 10, f"15001, 15006 and 15008 listening in {pod.netns}")


def exchange(pod, host, port, payload, timeout=10):
    """One connection from `pod` to host:port: (outcome, bytes received). outcome is "ok" (the whole
    payload echoed), "eof" (closed before the whole echo), "reset", "refused" or "timeout"."""
    try:
        s = pod.connect(host, port, timeout=timeout)
    except ConnectionRefusedError:
        return "refused", b""
    except socket.timeout:
        return "timeout", b""
    with s:
        outcome, received, _ = echo(s, payload)
    return outcome, received


def echo(s, payload):
    """Sends payload on a connected socket, half-closes, reads to the end: (outcome, bytes
    received, detail); outcome "ok", "eof", "timeout" or "reset"."""
    received = bytearray()
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
    except socket.timeout:
        return "timeout", bytes(received), f"after {len(received)} bytes"
    except (ConnectionResetError, BrokenPipeError) as error:
        return "reset", bytes(received), f"{error!r} after {len(received)} bytes"
    if bytes(received) != payload:
        return "eof", bytes(received), f"{len(received)} of {len(payload)} bytes"
    return "ok", bytes(received), ""


class ClientLoop:
    """Back-to-back connections from a pod to host:port on a thread inside the pod's namespace,
    each sending a payload and reading its echo; records (start, end, outcome, detail)."""

    def __init__(self, pod, host, port, payload=b"x" * 4096, timeout=20):
        self.pod, self.host, self.port, self.payload, self.timeout = pod, host, port, payload, timeout
        self.outcomes = []
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"client-{pod.key}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=self.timeout + 10)
        assert not self._thread.is_alive(), "the client loop did not stop"

    def _run(self):
        try:
            enter(self.pod.netns_path)
        except BaseException as error:
            self.error = error
            return
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                outcome = self._one()
            except Exception as error:  # recorded, the loop goes on
                outcome = ("error", repr(error))
            self.outcomes.append((started, time.monotonic(), *outcome))

    def _one(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        with s:
            try:
                s.connect((self.host, self.port))
            except ConnectionRefusedError as error:
                return "refused", repr(error)
            except socket.timeout:
                return "timeout", "connect"
            outcome, _, detail = echo(s, self.payload)
            return outcome, detail

    def ok_since(self, moment):
        return sum(1 for start, _, outcome, _ in list(self.outcomes) if start >= moment and outcome == "ok")

    def failures(self):
        return [o for o in list(self.outcomes) if o[2] != "ok"]


def inbound_lines(daemon):
    return [l for l in access_lines(daemon) if "direction=inbound" in l]


def outbound_lines(daemon):
    return [l for l in access_lines(daemon) if "direction=outbound" in l]


def issued(daemon, identity):
    return [e for e in daemon.audit_events("certificate_issued") if e.get("identity") == identity]


# -- 1. inbound plaintext on 15006 from a client that is not enrolled --------------------------

def test_inbound_plaintext_from_an_unenrolled_client_is_captured_on_15006(box, cni, start_daemon):
    a, b, c = box.pods
    box.unredirect(c)  # c: a plain host on the bridge, no istio-cni rules, not in the mesh
    echo = b.echo_server(8080)
    daemon = start_node(start_daemon, cni, mesh_config(box, pods=[a, b]))
    enrol(cni, [a, b])
    wait_ready(daemon)
    wait_up(daemon, [a, b])

    payload = os.urandom(64 * 1024)
    assert exchange(c, b.ip, 8080, payload) == ("ok", payload)  # captured by b's PREROUTING onto 15006

    line = wait_for(lambda: next(iter(inbound_lines(daemon)), None), 10, "the inbound access line")
    assert len(access_lines(daemon)) == 1, access_lines(daemon)
    assert f"src.addr={c.ip}:" in line, line
    assert f"dst.addr={b.ip}:8080" in line, line
    assert f"dst.workload={b.name}" in line, line
    assert "src.identity=" not in line and "dst.identity=" not in line, "plaintext: no identities (§15.3)"
    assert "error=" not in line, line
    assert f"bytes_sent={len(payload)}" in line or f"bytes_recv={len(payload)}" in line, line
    box.stop(echo.pid)


# -- 1b. the application sees the client's address (original source) ---------------------------

def seen_by_application(pod, host, port):
    """The client address (ip) the peer server at host:port saw for a connection from `pod`."""
    with pod.connect(host, port) as s:
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            reply += chunk
    return reply.decode().split()[0]


@pytest.mark.parametrize("orig_src", [None, "false"])
def test_the_application_sees_the_clients_address_unless_enable_orig_src_is_false(box, cni, start_daemon, orig_src):
    """As upstream (its `freebind_connect`): ztunnel connects to the application from the
    client's address, over HBONE (a's address, which the HBONE connection came from) and on
    15006 (c, a host outside the mesh); istio-cni's connmark rules bring the replies back. With
    ENABLE_ORIG_SRC=false the application sees its own pod's address."""
    a, b, c = box.pods
    box.unredirect(c)
    server = b.peer_server(8080)
    env = {"ENABLE_ORIG_SRC": orig_src} if orig_src else {}
    daemon = start_node(start_daemon, cni, mesh_config(box, pods=[a, b]), **env)
    enrol(cni, [a, b])
    wait_ready(daemon)
    wait_up(daemon, [a, b])
    wait_for(lambda: certificates_available(daemon, [a, b]), 30, "a's and b's certificates")

    hbone, plaintext = seen_by_application(a, b.ip, 8080), seen_by_application(c, b.ip, 8080)
    abi = next((int(l.split("abi=")[1].split()[0]) for l in daemon.log().splitlines()
                if "net-worker[0]" in l and "landlock enforced abi=" in l), 0)
    if orig_src == "false" or abi < 4:  # unset: on only where Landlock (ABI 4) holds the bind
        assert (hbone, plaintext) == (b.ip, b.ip)
    else:
        assert (hbone, plaintext) == (a.ip, c.ip)
    lines = wait_for(lambda: (lambda l: l if len(l) == 2 else None)(inbound_lines(daemon)), 10, "both inbound lines")
    assert all("error=" not in line for line in lines), lines
    assert not [l for l in daemon.log().splitlines() if "original source: bind failed" in l]
    box.stop(server.pid)


# -- 2. an L4 DENY policy: a -> b refused and logged with the policy; b serves others -----------

DENY_A = """\
- name: deny-a
  namespace: mesh
  scope: WorkloadSelector
  action: Deny
  dryRun: false
  rules:
  - - - principals:
        - !Exact cluster.local/ns/mesh/sa/sa-a
"""


def test_a_deny_policy_refuses_a_to_b_and_b_still_serves_others(box, cni, start_daemon):
    a, b, c = box.pods
    b.echo_server(8080)
    config = mesh_config(box, policies={"b": ["mesh/deny-a"]}, extra_policies=DENY_A)
    daemon = start_node(start_daemon, cni, config)
    enrol(cni, box.pods)
    wait_ready(daemon)
    wait_up(daemon, box.pods)
    wait_for(lambda: certificates_available(daemon, box.pods), 30, "every pod's certificate")

    outcome, received = exchange(a, b.ip, 8080, b"must not come back")
    assert outcome in ("eof", "reset") and received == b"", (outcome, received)

    def denied():
        return [l for l in inbound_lines(daemon) if "mesh/deny-a" in l]
    line = wait_for(denied, 10, "an inbound access line naming mesh/deny-a")[0]
    assert f"src.identity={a.identity}" in line and f"dst.identity={b.identity}" in line, line
    assert "error=" in line, line

    assert exchange(c, b.ip, 8080, b"c is allowed") == ("ok", b"c is allowed")
    ok = wait_for(lambda: [l for l in inbound_lines(daemon) if f"src.identity={c.identity}" in l], 10,
                  "c's inbound access line")
    assert "error=" not in ok[-1], ok
    outcome, received = exchange(a, b.ip, 8080, b"still denied")
    assert outcome in ("eof", "reset") and received == b"", (outcome, received)
    assert daemon.proc.poll() is None


# -- 3. two nodes: a (node-a) -> c (node-b) over HBONE, both identities on both sides ----------

def test_cross_node_traffic_is_carried_over_hbone_between_two_daemons(box, cni, cni_b, cacerts, start_daemon):
    a, b, c = box.pods
    nodes = {"a": "node-a", "b": "node-a", "c": "node-b"}
    config = mesh_config(box, nodes=nodes)
    c.echo_server(8080)
    node_a = start_node(start_daemon, cni, config, node="node-a", ZTUNNEL_CA_DIR=cacerts)
    node_b = start_node(start_daemon, cni_b, config, node="node-b", ZTUNNEL_CA_DIR=cacerts)
    assert len({node_a.ports[p] for p in ("admin", "stats", "readiness")}
               | {node_b.ports[p] for p in ("admin", "stats", "readiness")}) == 6
    enrol(cni, [a, b])
    enrol(cni_b, [c])
    wait_ready(node_a)
    wait_ready(node_b)
    wait_up(node_a, [a, b])
    wait_up(node_b, [c])
    assert set(workload_state(node_a)) == {a.uid, b.uid} and set(workload_state(node_b)) == {c.uid}
    wait_for(lambda: certificates_available(node_a, [a]), 30, "a's certificate on node-a")
    wait_for(lambda: certificates_available(node_b, [c]), 30, "c's certificate on node-b")

    payload = os.urandom(128 * 1024)
    assert exchange(a, c.ip, 8080, payload, timeout=20) == ("ok", payload)

    out = wait_for(lambda: outbound_lines(node_a), 10, "node-a's outbound access line")
    inb = wait_for(lambda: inbound_lines(node_b), 10, "node-b's inbound access line")
    assert len(out) == 1 and len(inb) == 1, (out, inb)
    assert not inbound_lines(node_a) and not outbound_lines(node_b), "each side logged by its own node"
    for line in out + inb:
        assert f"src.identity={a.identity}" in line and f"dst.identity={c.identity}" in line, line
        assert "error=" not in line, line
    assert f"dst.addr={c.ip}:{INBOUND_HBONE}" in out[0], out[0]
    assert f"src.addr={a.ip}:" in inb[0], inb[0]


# -- 4. an IPv4-only pod beside healthy ones -----------------------------------------------------

def test_an_ipv4_only_pod_comes_up_beside_healthy_pods(box, cni, start_daemon):
    a, b, c = box.pods
    for key in ("all", "default", "lo", "eth0"):
        c.run("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
    assert c.run("cat", "/proc/net/if_inet6", check=False).stdout.strip() == "", "c has no IPv6 address left"
    c.echo_server(8080)
    b.echo_server(8080)
    daemon = start_node(start_daemon, cni, mesh_config(box))
    assert [cni.add(**p.info()) for p in box.pods] == ["", "", ""], "every pod acked, the IPv4-only one too"
    assert cni.snapshot_sent() == ""
    wait_ready(daemon)
    wait_up(daemon, box.pods)
    wait_for(lambda: certificates_available(daemon, box.pods), 30, "every pod's certificate")

    assert exchange(a, c.ip, 8080, b"to the IPv4-only pod", timeout=20) == ("ok", b"to the IPv4-only pod")
    assert exchange(c, b.ip, 8080, b"from the IPv4-only pod", timeout=20) == ("ok", b"from the IPv4-only pod")
    assert exchange(a, b.ip, 8080, b"healthy pods", timeout=20) == ("ok", b"healthy pods")
    assert all(workload_state(daemon)[p.uid]["state"] == "Up" for p in box.pods)


# -- 5. NetWorker kill -9 under load -------------------------------------------------------------

def serving_pair(box, cni, start_daemon):
    """Pods a and b enrolled and served, an echo on b:8080, both certificates available."""
    a, b = box.pod("a"), box.pod("b")
    b.echo_server(8080)
    daemon = start_node(start_daemon, cni, mesh_config(box, pods=[a, b]))
    enrol(cni, [a, b])
    wait_ready(daemon)
    wait_up(daemon, [a, b])
    wait_for(lambda: certificates_available(daemon, [a, b]), 30, "a's and b's certificates")
    return a, b, daemon


def test_networker_kill_under_load_refuses_no_connection(box, cni, start_daemon):
    a, b, daemon = serving_pair(box, cni, start_daemon)
    (victim,) = daemon.workers("net-worker")

    with ClientLoop(a, b.ip, 8080) as loop:
        assert loop.error is None, loop.error
        begun = time.monotonic()
        wait_for(lambda: loop.ok_since(begun) >= 20 or loop.failures(), 30, "traffic before the kill")
        assert not loop.failures(), loop.failures()
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        replacement = wait_for(lambda: [p for p in daemon.workers("net-worker") if p != victim], 30,
                               "a replacement NetWorker")
        replaced = time.monotonic()
        wait_for(lambda: loop.ok_since(replaced) >= 20, 60, "the replacement serving the pods' listeners")
    failures = loop.failures()
    refused = [f for f in failures if f[2] == "refused"]
    assert not refused, f"refused connections: {refused}\n{_unusual(daemon)}"
    assert len(failures) <= 1, f"more than the one connection the dead worker held: {failures}\n{_unusual(daemon)}"
    assert all(f[0] <= killed + 0.5 for f in failures), f"a failure long after the kill: {failures}"
    assert daemon.proc.poll() is None and len(replacement) == 1
    wait_for(lambda: _dump_ok(daemon), 30, "/config_dump from the replacement")
    state = workload_state(daemon)
    assert state[a.uid]["state"] == "Up" and state[b.uid]["state"] == "Up", state
    assert serving(a) and serving(b)
    assert exchange(a, b.ip, 8080, b"after") == ("ok", b"after")


def _unusual(daemon):
    """The daemon's log without the lines every successful connection writes."""
    routine = ("HBONE stream connected", "mTLS established", "\tdebug\t")
    lines = [l for l in daemon.log().splitlines() if not any(r in l for r in routine)
             and not ("connection complete" in l and "error=" not in l)]
    return "\n".join(lines[-80:])


def _dump_ok(daemon):
    try:
        return daemon.config_dump()
    except (OSError, ValueError):
        return None


# -- 6. CertWorker kill -9 -----------------------------------------------------------------------

def test_certworker_kill_traffic_keeps_working_after_the_replacement(box, cni, start_daemon):
    a, b, daemon = serving_pair(box, cni, start_daemon)
    assert exchange(a, b.ip, 8080, b"before") == ("ok", b"before")
    (victim,) = daemon.workers("cert-worker")
    counts = {p.identity: len(issued(daemon, p.identity)) for p in (a, b)}
    assert all(counts.values()), counts

    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: [p for p in daemon.workers("cert-worker") if p != victim], 30, "a replacement CertWorker")
    # The keys died with the worker: both pods' certificates are issued again by the replacement.
    wait_for(lambda: all(len(issued(daemon, i)) > n for i, n in counts.items()), 30, "certificates issued again")
    wait_for(lambda: certificates_available(daemon, [a, b]), 30, "a's and b's certificates Available again")
    payload = os.urandom(64 * 1024)
    assert exchange(a, b.ip, 8080, payload, timeout=20) == ("ok", payload)
    assert exchange(a, b.ip, 8080, b"again") == ("ok", b"again")
    assert daemon.proc.poll() is None


# -- 7. daemon restart: the pods are re-adopted from the CNI's replay ------------------------------

def test_daemon_restart_readopts_pods_from_the_replay(box, cni, start_daemon):
    a, b = box.pod("a"), box.pod("b")
    b.echo_server(8080)
    config = mesh_config(box, pods=[a, b])
    first = start_node(start_daemon, cni, config)
    enrol(cni, [a, b])
    wait_ready(first)
    wait_up(first, [a, b])
    wait_for(lambda: certificates_available(first, [a, b]), 30, "a's and b's certificates")
    assert exchange(a, b.ip, 8080, b"first") == ("ok", b"first")
    before = {p.key: listener_inodes(p) for p in (a, b)}

    first.signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    for pod in (a, b):
        wait_for(lambda: not_serving(pod), 10, f"{pod.netns}'s listeners closed with the old daemon")

    cni.replay_on_connect = True  # the agent replays its snapshot on every (re)connection
    second = start_node(start_daemon, cni, config)
    cni.wait_connected(60, count=2)
    assert cni.wait_replayed(2) == ["", "", ""]  # Add a, Add b, SnapshotSent
    wait_ready(second)
    wait_up(second, [a, b])
    for pod in (a, b):
        assert listener_inodes(pod) != before[pod.key], f"{pod.netns}: new listeners from the new daemon"
    wait_for(lambda: certificates_available(second, [a, b]), 30, "a's and b's certificates on the new daemon")
    payload = os.urandom(64 * 1024)
    assert exchange(a, b.ip, 8080, payload, timeout=20) == ("ok", payload)
    wait_for(lambda: [l for l in outbound_lines(second) if f"src.identity={a.identity}" in l], 10,
             "the new daemon's outbound access line")


# -- 8. a deleted pod's HBONE peers hear it: GOAWAY, then close_notify --------------------------

def test_a_deleted_pods_hbone_peers_get_goaway_and_close_notify(box, cni, start_daemon, tmp_path):
    """DelWorkload closes the pod's connections (§8 step 7), and an HBONE peer of the pod sees a
    GOAWAY and then TLS close_notify rather than a bare TCP close (istio/ztunnel#1191). The peer
    is a client of our own (Python ssl + h2) in a namespace that is not enrolled, with a
    certificate from the CA the daemon uses."""
    from hbone_client import HBONEClient
    from netns import in_netns

    a, b, c = box.pods
    box.unredirect(c)
    b.echo_server(8080)
    ca, cacerts, client_dir = MiniCA(), str(tmp_path / "cacerts"), str(tmp_path / "client")
    ca.write_cacerts(cacerts)
    ca.issue(client_dir, "sa-c", namespace=box.namespace)
    daemon = start_node(start_daemon, cni, mesh_config(box, pods=[a, b]), ZTUNNEL_CA_DIR=cacerts)
    enrol(cni, [a, b])
    wait_ready(daemon)
    wait_up(daemon, [a, b])
    wait_for(lambda: certificates_available(daemon, [b]), 30, "b's certificate")

    client = in_netns(c.netns_path, lambda: HBONEClient(INBOUND_HBONE, client_dir, host=b.ip))
    client.sock.suppress_ragged_eofs = False  # a bare TCP close raises; close_notify reads as b""
    try:
        stream = client.connect(f"{b.ip}:8080")
        assert client.pump(lambda: stream in client.status) and client.status[stream] == 200
        client.send(stream, b"before the delete")
        assert client.pump(lambda: client.data[stream] == b"before the delete")
        assert cni.delete(b.uid) == ""
        assert client.pump(lambda: client.goaway is not None), "no GOAWAY from the deleted pod's 15008"
        while client._read_once():  # until close_notify: a ragged end raises ssl.SSLEOFError here
            pass
    finally:
        client.sock.close()
