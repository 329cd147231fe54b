"""Live tests of the workers' walls (issue #6): from inside a running worker (the fault-injection
endpoint, off unless enabled), each forbidden operation fails or kills the worker as its seccomp
profile and Landlock policy say."""
import errno
import os
import re
import socket

import pytest

from daemon import EchoServer, http, wait_for
from identities import MiniCA, serving_config
from test_identity import key_needles, memory_contains, try_handshake
from test_restart import replaced

FAULTS = {"ZTUNNEL_DEBUG_FAULT_INJECTION": "true"}


def inject(daemon, kind, port=None):
    target = f"/debug/fault?kind={kind}" + (f"&port={port}" if port else "")
    assert http(daemon.ports["admin"], target, method="POST")[0] == 200


def fault_line(daemon, what):
    lines = [l for l in daemon.log().splitlines() if f"fault {what}:" in l]
    return lines[-1] if lines else None


def landlock_abi(daemon, role):
    line = next(l for l in daemon.log().splitlines() if f"{role}[0]" in l and "landlock" in l)
    match = re.search(r"landlock enforced abi=(\d+)", line)
    return int(match.group(1)) if match else 0


@pytest.mark.parametrize("kind", ["clone-namespace", "netlink-socket", "signal-other", "make-dir", "udp-socket",
                                  "unix-socket", "raw-socket", "setns", "unshare", "ptrace", "bind-port"])
def test_forbidden_operations_kill_the_networker(start_daemon, kind):
    # The pod's profile as deployed (EPERM for what it does not list), so the kill (SIGSYS) is the
    # NetWorker's own filter's doing, not the test harness's killing pod profile.
    daemon = start_daemon(extra_env=FAULTS, pod_seccomp="errno")
    daemon.wait_ready()
    (old,) = daemon.workers("net-worker")
    inject(daemon, kind)
    replaced(daemon, "net-worker", old)
    (exit_event,) = daemon.audit_events("worker_exit")
    assert exit_event["pid"] == old and exit_event["cause"].startswith("killed by signal SIGSYS"), exit_event
    assert fault_line(daemon, kind) is None  # it never got to say it survived


def test_in_pod_mode_the_networker_may_bind_port_zero_only(start_daemon, tmp_path):
    """In-pod mode with original source: bind(2) stays in the NetWorker's profile (a connection
    to an application is bound to the client's address, port 0), and Landlock keeps it to port 0:
    a chosen port is refused (EACCES) and the worker lives. Outside that mode the Supervisor drops
    the rule and a bind kills (the test above, bind-port)."""
    daemon = start_daemon(local_config="workloads: []\n", pod_seccomp="errno", extra_env={
        **FAULTS, "INPOD_UDS": str(tmp_path / "no-cni.sock"), "NODE_NAME": "node-a", "UNSTABLE_ENABLE_SOCKS5": "false"})
    wait_for(lambda: daemon.workers("net-worker") and "landlock" in daemon.log(), 30, "the NetWorker up")
    wait_for(lambda: (lambda r: r if r else None)(http_status(daemon)), 30, "the admin port")
    if landlock_abi(daemon, "net-worker") < 4:
        pytest.skip("this kernel has no Landlock with network rules (ABI >= 4): original source is off here")
    workers = daemon.children()
    inject(daemon, "bind-port", 15999)
    wait_for(lambda: fault_line(daemon, "bind-port"), 10, "the bind to 15999 reported")
    assert "refused: Permission denied (errno 13)" in fault_line(daemon, "bind-port"), fault_line(daemon, "bind-port")
    inject(daemon, "bind-port")  # port 0: an ephemeral port, as original source binds
    wait_for(lambda: "let it through" in fault_line(daemon, "bind-port"), 10, "the bind to port 0 reported")
    assert daemon.children() == workers and not daemon.audit_events("worker_exit")
    # The known gap, pinned: with `bind` in the profile, an abstract unix name can be bound to an
    # end of a socketpair (Landlock scopes abstract connects, not binds): the name is squatted
    # in the NetWorker's network namespace, here this test's. When the bind below succeeds, the
    # gap is closed: update THREAT_MODEL.md.
    tag = os.getpid() % 60000 + 1
    inject(daemon, "abstract-bind", tag)
    wait_for(lambda: fault_line(daemon, "abstract-bind"), 10, "the abstract bind reported")
    assert "let it through" in fault_line(daemon, "abstract-bind"), fault_line(daemon, "abstract-bind")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as squatted:
        with pytest.raises(OSError) as refused:
            squatted.bind(f"\0ztunnel-wall-probe-{tag}")
        assert refused.value.errno == errno.EADDRINUSE
    assert daemon.children() == workers and not daemon.audit_events("worker_exit")


def test_the_networker_cannot_mark_its_sockets_or_make_them_transparent(start_daemon):
    """SO_MARK 0x539 is istio-cni's bypass of the pods' traffic capture, and IP_TRANSPARENT lets a
    socket use any source address: both need a capability (CAP_NET_ADMIN or CAP_NET_RAW; for
    SO_MARK, NET_RAW since Linux 5.17) that no worker has, and `setsockopt` is otherwise not filtered. A NetWorker trying
    them on a TCP socket of its own is refused (EPERM) and lives; the in-pod sockets that carry
    the mark come made by the Supervisor."""
    daemon = start_daemon(extra_env=FAULTS)
    daemon.wait_ready()
    workers = daemon.children()
    for kind in ("so-mark", "ip-transparent"):
        inject(daemon, kind)
        wait_for(lambda: fault_line(daemon, kind), 10, f"the {kind} probe reported")
        assert "refused: Operation not permitted (errno 1)" in fault_line(daemon, kind), fault_line(daemon, kind)
    assert daemon.children() == workers and not daemon.audit_events("worker_exit")


def http_status(daemon):
    try:
        return http(daemon.ports["admin"], "/config_dump", timeout=2)[0]
    except OSError:
        return None


# The NetWorker's wall probes that kill; tried in the CertWorker and the xDS worker too.
WALL_KILLS = ["clone-namespace", "netlink-socket", "raw-socket", "setns", "unshare", "ptrace", "signal-other"]


def probe_walls(daemon, role, prefix):
    """In worker `role` (faults `<prefix>-<wall>`, relayed by the Supervisor): an AF_UNIX socket
    is answered EACCES and the worker lives; every other wall kills it (SIGSYS, its own filter:
    the pod profile answers EPERM), before it could log that it survived, and it is replaced."""
    inject(daemon, f"{prefix}-unix-socket")
    wait_for(lambda: fault_line(daemon, f"{prefix}-unix-socket"), 10, "the unix-socket fault reported")
    assert "refused: Permission denied (errno 13)" in fault_line(daemon, f"{prefix}-unix-socket")
    assert not daemon.audit_events("worker_exit")
    for wall in WALL_KILLS:
        (old,) = daemon.workers(role)
        inject(daemon, f"{prefix}-{wall}")
        replaced(daemon, role, old)
        exit_event = next(e for e in daemon.audit_events("worker_exit") if e["pid"] == old)
        assert exit_event["role"] == role and exit_event["cause"].startswith("killed by signal SIGSYS"), (wall, exit_event)
        assert fault_line(daemon, f"{prefix}-{wall}") is None, wall
    # Both callers' workers look no name up (the built-in CA; istiod at an IP literal), so the
    # Supervisor took UDP out of their policies: a datagram socket kills as well.
    (old,) = daemon.workers(role)
    inject(daemon, f"{prefix}-udp-socket", 9)
    replaced(daemon, role, old)
    exit_event = next(e for e in daemon.audit_events("worker_exit") if e["pid"] == old)
    assert exit_event["cause"].startswith("killed by signal SIGSYS"), exit_event
    assert fault_line(daemon, f"{prefix}-udp-socket port 9") is None


def test_forbidden_operations_kill_the_certworker(start_daemon):
    daemon = start_daemon(extra_env=FAULTS, pod_seccomp="errno")
    daemon.wait_ready()
    probe_walls(daemon, "cert-worker", "cert")


def test_forbidden_operations_kill_the_xds_worker(start_daemon, xds):
    daemon = start_daemon(local_config=False, pod_seccomp="errno", extra_env={
        **FAULTS, "XDS_ADDRESS": f"https://127.0.0.1:{xds.port}", "XDS_ROOT_CA": xds.root_pem_path, "AUTH_TOKEN": "t"})
    daemon.wait_ready()
    probe_walls(daemon, "xds-worker", "xds")


def test_opening_a_file_fails_in_both_workers(start_daemon):
    daemon = start_daemon(extra_env=FAULTS)
    daemon.wait_ready()
    workers = daemon.children()
    inject(daemon, "open-file")
    inject(daemon, "cert-open-file")
    wait_for(lambda: fault_line(daemon, "open-file") and fault_line(daemon, "cert-open-file"), 10, "both faults reported")
    assert "refused: Permission denied (errno 13)" in fault_line(daemon, "open-file")
    assert "refused: Permission denied (errno 13)" in fault_line(daemon, "cert-open-file")
    assert daemon.children() == workers and not daemon.audit_events("worker_exit")


def test_landlock_is_a_second_wall(start_daemon):
    """With seccomp only logging (audit mode), Landlock alone still denies paths to both workers
    (mkdir: outside both allowlists, so in audit mode only Landlock stands in its way; `open`
    keeps its EACCES rule even in audit mode and would not show Landlock), and every TCP connect
    but the CA's port to the CertWorker. Without the pod's profile, which would stop mkdir first
    (the next test)."""
    ca_port_server, other_server = EchoServer(), EchoServer()
    try:
        daemon = start_daemon(extra_env={**FAULTS, "ZTUNNEL_SECCOMP_MODE": "audit",
                                         "CA_ADDRESS": f"127.0.0.1:{ca_port_server.port}", "CA_ROOT_CA": "SYSTEM"},
                              pod_seccomp="off")
        daemon.wait_ready()
        if landlock_abi(daemon, "net-worker") < 4:
            pytest.skip("this kernel has no Landlock with network rules (ABI >= 4); seccomp alone confines the workers")
        inject(daemon, "make-dir")
        inject(daemon, "cert-make-dir")
        inject(daemon, "cert-connect", other_server.port)
        wait_for(lambda: all(fault_line(daemon, w) for w in ("make-dir", "cert-make-dir", f"cert-connect port {other_server.port}")),
                 10, "the faults reported")
        assert "refused: Permission denied (errno 13)" in fault_line(daemon, "make-dir")
        assert "refused: Permission denied (errno 13)" in fault_line(daemon, "cert-make-dir")
        assert "refused: Permission denied (errno 13)" in fault_line(daemon, f"cert-connect port {other_server.port}")
        inject(daemon, "cert-connect", ca_port_server.port)
        wait_for(lambda: fault_line(daemon, f"cert-connect port {ca_port_server.port}"), 10, "the CA-port connect reported")
        assert "allowed" in fault_line(daemon, f"cert-connect port {ca_port_server.port}")
        assert not daemon.audit_events("worker_exit")
    finally:
        ca_port_server.close()
        other_server.close()


def test_with_the_builtin_ca_the_certworker_connects_nowhere(start_daemon):
    """No CA_ADDRESS: the CertWorker's Landlock policy admits no TCP port at all, so a connect
    to a listening port is refused (the keys have no TCP way out)."""
    server = EchoServer()
    try:
        daemon = start_daemon(extra_env=FAULTS)
        daemon.wait_ready()
        if landlock_abi(daemon, "cert-worker") < 4:
            pytest.skip("this kernel has no Landlock with network rules (ABI >= 4)")
        inject(daemon, "cert-connect", server.port)
        wait_for(lambda: fault_line(daemon, f"cert-connect port {server.port}"), 10, "the connect fault reported")
        assert "refused: Permission denied (errno 13)" in fault_line(daemon, f"cert-connect port {server.port}")
        assert not daemon.audit_events("worker_exit")
    finally:
        server.close()


def test_a_certworker_that_looks_its_ca_up_keeps_udp_to_any_address(start_daemon):
    """The known gap, pinned: with CA_ADDRESS a host name, the CertWorker needs glibc's resolver,
    so its policy keeps UDP, and Landlock does not filter UDP: a datagram reaches an address that
    is neither the CA nor a resolver (a socket of this test), and nothing stops it. When this test
    fails because the datagram no longer arrives, the gap is closed: update THREAT_MODEL.md."""
    ca = EchoServer()
    try:
        daemon = start_daemon(extra_env={**FAULTS, "CA_ADDRESS": f"localhost:{ca.port}", "CA_ROOT_CA": "SYSTEM"})
        daemon.wait_ready()
        a_datagram_reaches_the_test(daemon, "cert-udp-socket")
    finally:
        ca.close()


def a_datagram_reaches_the_test(daemon, probe):
    """Injects the UDP fault `probe` aimed at a socket of this test: its datagram arrives and no
    worker exits."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(10)
        workers = daemon.children()
        inject(daemon, probe, sink.getsockname()[1])
        payload, _ = sink.recvfrom(1024)
    assert payload.startswith(f"{probe} from pid ".encode()), payload
    assert daemon.children() == workers and not daemon.audit_events("worker_exit")


def test_a_networker_can_send_udp_elsewhere_through_its_nameserver_socket(start_daemon):
    """The known gap, pinned: a NetWorker makes no UDP socket, but the sockets the Supervisor
    connected to the nameservers (for its own lookups) still take a destination address (sendto;
    sendmsg with msg_name; connect again), which neither seccomp nor Landlock checks: a datagram
    reaches a socket of this test that is no nameserver. A NetWorker already connects over TCP
    anywhere by design; this widens that to UDP. When the datagram no longer arrives the gap is
    closed: update THREAT_MODEL.md."""
    daemon = start_daemon(extra_env=FAULTS)
    daemon.wait_ready()
    if "dns proxy: forwarding to nameserver" not in daemon.log():
        pytest.skip("no usable nameserver in this host's /etc/resolv.conf: the NetWorker has no such socket")
    a_datagram_reaches_the_test(daemon, "dns-upstream-elsewhere")


def test_a_networker_can_listen_on_a_port_the_kernel_picks(start_daemon):
    """The known gap, pinned: `listen` stays in the NetWorker's profile (SwiftNIO listens again on
    each listener it adopts), and on a socket never bound the kernel picks an ephemeral port on
    every address, a bind Landlock's rule does not see. A NetWorker can so accept connections on
    a port of its network namespace (the node's, in every mode). When the connection below is
    refused, the gap is closed: update THREAT_MODEL.md."""
    daemon = start_daemon(extra_env=FAULTS)
    daemon.wait_ready()
    workers = daemon.children()
    inject(daemon, "listen-unbound")
    wait_for(lambda: fault_line(daemon, "listen-unbound"), 10, "the listen reported")
    match = re.search(r"let it through \(result (\d+)\)", fault_line(daemon, "listen-unbound"))
    assert match, fault_line(daemon, "listen-unbound")
    socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=5).close()
    assert daemon.children() == workers and not daemon.audit_events("worker_exit")


def test_a_certworker_can_stat_any_path(start_daemon):
    """The known gap, pinned: `newfstatat` stays in the CertWorker's profile (glibc's fstat is
    built on it) and Landlock does not cover stat, so the key holder can learn that a path exists,
    its size and owner, though it can open none. When the probe is refused, update
    THREAT_MODEL.md."""
    daemon = start_daemon(extra_env=FAULTS)
    daemon.wait_ready()
    workers = daemon.children()
    inject(daemon, "cert-stat-file")
    wait_for(lambda: fault_line(daemon, "cert-stat-file"), 10, "the stat reported")
    assert "fault cert-stat-file: allowed" in fault_line(daemon, "cert-stat-file"), fault_line(daemon, "cert-stat-file")
    inject(daemon, "cert-open-file")  # while opening stays refused
    wait_for(lambda: fault_line(daemon, "cert-open-file"), 10, "the open reported")
    assert "refused" in fault_line(daemon, "cert-open-file"), fault_line(daemon, "cert-open-file")
    assert daemon.children() == workers and not daemon.audit_events("worker_exit")


def test_the_pods_profile_is_a_wall_of_its_own(start_daemon):
    """The container's seccomp profile (deploy/seccomp/ztunnel-swift.json, as deployed: EPERM for
    what it does not list) holds when a worker's own filter does not: with the workers' filters
    only logging, mkdir in the NetWorker and the CertWorker is answered EPERM by the pod layer
    (Landlock would answer EACCES), and the workers keep running."""
    daemon = start_daemon(extra_env={**FAULTS, "ZTUNNEL_SECCOMP_MODE": "audit"}, pod_seccomp="errno")
    daemon.wait_ready()
    inject(daemon, "make-dir")
    inject(daemon, "cert-make-dir")
    wait_for(lambda: fault_line(daemon, "make-dir") and fault_line(daemon, "cert-make-dir"), 10, "the faults reported")
    assert "refused: Operation not permitted (errno 1)" in fault_line(daemon, "make-dir"), fault_line(daemon, "make-dir")
    assert "refused: Operation not permitted (errno 1)" in fault_line(daemon, "cert-make-dir")
    assert not daemon.audit_events("worker_exit")


def test_the_token_reaches_the_certworker_alone(start_daemon):
    token = b"literal-secret-token-4f1c9a"
    daemon = start_daemon(extra_env={"AUTH_TOKEN": token.decode(), "CA_ADDRESS": "127.0.0.1:1", "CA_ROOT_CA": "SYSTEM"})
    daemon.wait_ready()
    # Not in /config_dump, and nowhere in the NetWorker's memory (it never received it); the
    # CertWorker, which sends it to the CA, has it (the scan's positive control).
    dump = http(daemon.ports["admin"], "/config_dump")[1]
    assert token.decode() not in dump and "authToken" not in dump
    (net,) = daemon.workers("net-worker")
    (cert,) = daemon.workers("cert-worker")
    assert memory_contains(net, [token]) == set()
    assert memory_contains(cert, [token]) == {0}


def test_with_xds_only_the_token_reaches_the_xds_worker_alone(start_daemon, xds):
    """XDS_ADDRESS without CA_ADDRESS (the built-in CA): the token is istiod's xDS credential,
    so the xDS worker gets it and sends it; the CertWorker, which has no CA to send it to, does
    not get it, and neither does the NetWorker."""
    token = b"literal-xds-token-7be20d"
    daemon = start_daemon(local_config=False, extra_env={
        "AUTH_TOKEN": token.decode(), "XDS_ADDRESS": f"https://127.0.0.1:{xds.port}", "XDS_ROOT_CA": xds.root_pem_path})
    daemon.wait_ready()
    wait_for(lambda: xds.streams, 30, "a first xDS stream")
    assert xds.streams[0]["authorization"] == f"Bearer {token.decode()}"
    (net,) = daemon.workers("net-worker")
    (cert,) = daemon.workers("cert-worker")
    (xdsw,) = daemon.workers("xds-worker")
    assert memory_contains(xdsw, [token]) == {0}
    assert memory_contains(cert, [token]) == set(), "the CertWorker holds a token it has no use for"
    assert memory_contains(net, [token]) == set()
    # Sent and dropped would leave no trace in memory; the CertWorker says when it gets one.
    assert "received istiod's token" not in daemon.log()


def test_the_xds_worker_holds_no_private_key(start_daemon, xds, tmp_path):
    """A daemon with both sources and a workload identity whose key the test knows: a scan of
    the xDS worker's memory finds none of it; the same scan finds it in the CertWorker."""
    _, key = MiniCA().issue(str(tmp_path / "identities" / "server"), "server")
    daemon = start_daemon(local_config=serving_config(), extra_env={
        "ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), "XDS_ADDRESS": f"https://127.0.0.1:{xds.port}",
        "XDS_ROOT_CA": xds.root_pem_path, "AUTH_TOKEN": "t"})
    daemon.wait_ready()
    wait_for(lambda: daemon.audit_events("certificate_loaded"), 30, "the static identity loaded")
    (xdsw,) = daemon.workers("xds-worker")
    (cert,) = daemon.workers("cert-worker")
    needles = key_needles(key)
    assert memory_contains(xdsw, needles) == set(), "the xDS worker holds private key material"
    assert memory_contains(cert, needles) & {0, 1}


def test_the_xds_workers_walls_from_inside(start_daemon, xds):
    """The xDS worker's walls, probed from inside it: opening a file fails (EACCES); Landlock
    lets TCP reach XDS_ADDRESS's port only (which is also istiod's CA port in the upstream
    chart: the threat model's open question, shown here as it stands); mkdir kills it (SIGSYS,
    its own filter, the pod profile as deployed) and it is replaced."""
    other = EchoServer()
    try:
        daemon = start_daemon(local_config=False, pod_seccomp="errno", extra_env={
            **FAULTS, "XDS_ADDRESS": f"https://127.0.0.1:{xds.port}", "XDS_ROOT_CA": xds.root_pem_path, "AUTH_TOKEN": "t"})
        daemon.wait_ready()
        inject(daemon, "xds-open-file")
        wait_for(lambda: fault_line(daemon, "xds-open-file"), 10, "the open-file fault reported")
        assert "refused: Permission denied (errno 13)" in fault_line(daemon, "xds-open-file")
        if landlock_abi(daemon, "xds-worker") >= 4:
            inject(daemon, "xds-connect", other.port)
            inject(daemon, "xds-connect", xds.port)
            wait_for(lambda: fault_line(daemon, f"xds-connect port {other.port}") and
                     fault_line(daemon, f"xds-connect port {xds.port}"), 10, "the connect faults reported")
            assert "refused: Permission denied (errno 13)" in fault_line(daemon, f"xds-connect port {other.port}")
            assert "allowed" in fault_line(daemon, f"xds-connect port {xds.port}")
        (old,) = daemon.workers("xds-worker")
        inject(daemon, "xds-make-dir")
        replaced(daemon, "xds-worker", old)
        (exit_event,) = daemon.audit_events("worker_exit")
        assert exit_event["pid"] == old and exit_event["cause"].startswith("killed by signal SIGSYS"), exit_event
    finally:
        other.close()


def test_a_networker_that_sends_audit_is_killed_and_nothing_is_recorded_for_it(start_daemon):
    """Only the CertWorker may write audit events through the Supervisor: an `audit` frame from a
    NetWorker is an IPC violation (killed, replaced), and the forged event is not written."""
    daemon = start_daemon(extra_env=FAULTS)
    daemon.wait_ready()
    (old,) = daemon.workers("net-worker")
    inject(daemon, "send-audit")
    replaced(daemon, "net-worker", old)
    (violation,) = daemon.audit_events("ipc_violation")
    assert violation["pid"] == old and violation["role"] == "net-worker", violation
    assert not [e for e in daemon.audit_events("certificate_issued") if e.get("identity") == "forged"]


@pytest.mark.parametrize("kind,reason", [("bad-sign", "malformed request"), ("signer-stall", "not reading its signer channel")])
def test_a_networker_misusing_its_signer_channel_loses_it_and_is_replaced(start_daemon, kind, reason):
    """The CertWorker closes the signer channel of a NetWorker that sends it something that is
    no sign request (fault probe `bad-sign`), or that stops reading it while asking for
    signatures (`signer-stall`: its queue fills, and the CertWorker, which serves every
    NetWorker from one loop, never waits on one). Either is a `signer_violation`, a security
    event, and the Supervisor replaces the NetWorker: without a signer channel it could complete
    no handshake, and it may be compromised. The CertWorker is the same process (never stuck)
    and signs for the replacement."""
    from test_outbound_hbone import config as hbone_config, round_trip
    from daemon import socks5_connect
    echo = EchoServer(host="127.0.0.2")
    try:
        daemon = start_daemon(local_config=hbone_config(echo.port), hbone_wildcard=True,
                              extra_env={**FAULTS, "UNSTABLE_ENABLE_SOCKS5": "true"})
        daemon.wait_ready()
        (cert,) = daemon.workers("cert-worker")
        (old,) = daemon.workers("net-worker")
        inject(daemon, kind)
        replaced(daemon, "net-worker", old)
        (violation,) = daemon.audit_events("signer_violation")
        assert violation["net_worker"] == "0" and violation["security"] is True and reason in violation["reason"], violation
        (exit_event,) = daemon.audit_events("worker_exit")
        assert exit_event["pid"] == old and "signer violation" in exit_event["cause"], exit_event
        assert daemon.workers("cert-worker") == [cert]
        daemon.wait_ready()
        sock, code = socks5_connect(daemon.ports["socks5"], 80, "10.96.0.9", source="127.0.0.3")
        with sock:
            assert code == 0 and round_trip(sock, b"signed again") == b"signed again"
    finally:
        echo.close()


def test_sixty_four_refused_signs_close_the_channel_and_replace_the_networker(start_daemon):
    """Sign requests the CertWorker refuses (a handle that names no key, fault probe
    `refused-signs`) are audited (the first 8 `sign_refused`), and the 64th in a minute closes
    the NetWorker's signer channel: a `signer_violation`, and the NetWorker is replaced."""
    daemon = start_daemon(extra_env=FAULTS)
    daemon.wait_ready()
    (old,) = daemon.workers("net-worker")
    inject(daemon, "refused-signs")
    replaced(daemon, "net-worker", old)
    assert len(daemon.audit_events("sign_refused")) == 8
    (violation,) = daemon.audit_events("signer_violation")
    assert violation["reason"] == "64 refused sign requests", violation


def test_an_xds_worker_publishing_an_unsealed_snapshot_is_killed_and_the_mesh_kept(start_daemon, xds):
    """A snapshot that is no sealed memfd is an IPC violation: the xDS worker is killed and
    replaced, the NetWorkers keep the model they have, and readiness stays."""
    daemon = start_daemon(local_config=False, extra_env={
        **FAULTS, "XDS_ADDRESS": f"https://127.0.0.1:{xds.port}", "XDS_ROOT_CA": xds.root_pem_path, "AUTH_TOKEN": "t"})
    daemon.wait_ready()
    (old,) = daemon.workers("xds-worker")
    inject(daemon, "xds-bad-snapshot")
    replaced(daemon, "xds-worker", old)
    (violation,) = daemon.audit_events("ipc_violation")
    assert violation["pid"] == old and "mesh snapshot refused" in violation["reason"], violation
    assert daemon.ready() and not [e for e in daemon.audit_events("worker_exit") if e["role"] == "net-worker"]


@pytest.mark.parametrize("kind,reason", [
    ("cert-audit-reserved-key", "is not one the CertWorker may write, or forges a reserved key"),
    ("cert-audit-unlisted-event", "is not one the CertWorker may write, or forges a reserved key"),
    ("cert-shutdown-request", "shutdownRequest is not permitted from"),
])
def test_a_certworker_misusing_its_channel_is_killed_and_what_it_sent_has_no_effect(start_daemon, kind, reason):
    """The CertWorker may send the Supervisor only `audit` frames, of its own events and without
    the keys the Supervisor writes itself: an audit frame naming a `pid`, one with an event name
    not on its list (`worker_ready`), or a `shutdownRequest` (which would stop the node) each
    get it killed and replaced. The forged event is not written, the node keeps running and the
    NetWorker is not touched."""
    daemon = start_daemon(extra_env=FAULTS)
    daemon.wait_ready()
    (old,) = daemon.workers("cert-worker")
    (net,) = daemon.workers("net-worker")
    inject(daemon, kind)
    replaced(daemon, "cert-worker", old)
    (violation,) = daemon.audit_events("ipc_violation")
    assert violation["pid"] == old and violation["role"] == "cert-worker" and reason in violation["reason"], violation
    assert not [e for e in daemon.audit() if e.get("identity") == "forged"]
    assert not daemon.audit_events("shutdown_requested")
    assert daemon.workers("net-worker") == [net] and daemon.ready()


def test_the_supervisor_numbers_snapshots_and_a_storm_ends_with_the_last_in_force(start_daemon, xds):
    """The xDS worker cannot choose the generation the NetWorkers' answers are matched against:
    200 snapshots at once, each claiming generation 7 (fault probe `xds-snapshot-storm`), are
    numbered by the Supervisor one after the other. With one in flight per NetWorker and the
    latest sent after each answer, the NetWorker ends with the last in force; nobody is killed.
    The audit sink gets at most 100 `mesh_snapshot` events a second from it; the rest are
    summed up in `audit_events_dropped`, so all 200 are accounted for (the budget itself:
    `test_a_certworker_flooding_the_audit_sink_is_held_to_its_budget`)."""
    daemon = start_daemon(local_config=False, extra_env={
        **FAULTS, "XDS_ADDRESS": f"https://127.0.0.1:{xds.port}", "XDS_ROOT_CA": xds.root_pem_path, "AUTH_TOKEN": "t"})
    daemon.wait_ready()
    (xds_worker,) = daemon.workers("xds-worker")
    before = daemon.audit_events("mesh_snapshot")
    inject(daemon, "xds-snapshot-storm")

    def accounted():
        dropped = sum(e["dropped"] for e in daemon.audit_events("audit_events_dropped") if e["worker"] == "xds-worker[0]")
        return len(daemon.audit_events("mesh_snapshot")) - len(before) + dropped >= 200
    wait_for(accounted, 30, "200 more snapshots relayed, written or summed up")
    storm = daemon.audit_events("mesh_snapshot")[len(before):]
    dropped = daemon.audit_events("audit_events_dropped")
    assert all(e["worker"] == "xds-worker[0]" and e["events"] == f"mesh_snapshot:{e['dropped']}" for e in dropped), dropped
    assert len(storm) + sum(e["dropped"] for e in dropped) == 200
    first = before[-1]["generation"] + 1
    generations = [e["generation"] for e in storm]
    assert generations == sorted(set(generations)) and generations[0] == first and generations[-1] <= first + 199
    assert {e["worker_generation"] for e in storm} == {"7"}
    last = first + 199

    def in_force():
        return [l for l in daemon.log().splitlines() if "net-worker[0]" in l and "mesh model source=xds" in l
                and f" generation={last} " in l]
    wait_for(in_force, 30, f"generation {last} in force in the NetWorker")
    assert not daemon.audit_events("ipc_violation") and not daemon.audit_events("worker_exit")
    assert daemon.workers("xds-worker") == [xds_worker] and daemon.ready()


@pytest.mark.parametrize("flood", ["cert-signer-flood", "cert-identity-flood"])
def test_a_certworker_flooding_the_signer_channels_does_not_stop_the_networkers(start_daemon, tmp_path, flood):
    """A CertWorker may push well-formed frames to the NetWorkers at any rate (threat model: no
    rate bound), waiting whenever a channel is full: 2,000 rounds of a ~30 KiB status frame
    (fault probe `cert-signer-flood`, 60 MB), or of every identity it holds again
    (`cert-identity-flood`: a TLS context built for each). A NetWorker's signer reader thread takes them; its event loops keep
    serving: mTLS handshakes, each a signature round trip over that same channel, complete after
    the flood, and nobody is killed or cut off."""
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "server")
    ca.issue(str(tmp_path / "client"), "client")
    daemon = start_daemon(local_config=serving_config(), extra_env={
        **FAULTS, "ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities")})
    daemon.wait_ready()
    wait_for(lambda: try_handshake(daemon.ports["inbound"], str(tmp_path / "client")), 30, "a first handshake")
    workers = daemon.children()
    inject(daemon, flood)
    wait_for(lambda: fault_line(daemon, flood), 30, "the flood sent")
    sent, meant = re.search(r"(\d+) of (\d+) \w+ frames sent", fault_line(daemon, flood)).groups()
    assert sent == meant and int(sent) >= 2000, fault_line(daemon, flood)  # the channels took every one
    for _ in range(20):
        assert try_handshake(daemon.ports["inbound"], str(tmp_path / "client")), daemon.log()[-2000:]
    assert daemon.children() == workers
    assert not daemon.audit_events("worker_exit") and not daemon.audit_events("signer_violation")


def test_a_certworker_flooding_the_audit_sink_is_held_to_its_budget(start_daemon):
    """A CertWorker may write its own audit events, but not at any rate: of 2,000 sent at once
    (fault probe `cert-audit-flood`) at most 100 a second are written, and the rest are summed
    up in `audit_events_dropped` (a security event naming the worker and the event), so every
    one is accounted for. The CertWorker is not killed for it; the sink keeps taking events."""
    daemon = start_daemon(extra_env=FAULTS)
    daemon.wait_ready()
    (cert,) = daemon.workers("cert-worker")
    inject(daemon, "cert-audit-flood")

    def flood():
        written = [e for e in daemon.audit_events("certificate_issued") if e.get("identity") == "flood"]
        dropped = [e for e in daemon.audit_events("audit_events_dropped") if e["worker"] == "cert-worker[0]"]
        return written, dropped
    wait_for(lambda: len(flood()[0]) + sum(e["dropped"] for e in flood()[1]) >= 2000, 30, "2,000 audit events written or summed up")
    written, dropped = flood()
    assert len(written) + sum(e["dropped"] for e in dropped) == 2000
    seconds = {e["time"][:19] for e in written}
    assert len(written) <= 100 * len(seconds) + 100, (len(written), seconds)  # +100: a second's edge in two clocks
    assert all(e["security"] is True and e["events"].startswith("certificate_issued:") for e in dropped), dropped
    assert daemon.workers("cert-worker") == [cert] and not daemon.audit_events("ipc_violation")
    assert "audit events in one second, over its 100; not written" in daemon.log()
