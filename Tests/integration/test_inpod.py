"""In-pod mode (issue 9; ISTIO_COMPAT §2, §2.1, §8, §16, §17.2, §20): the daemon runs in the root
namespace, istio-cni's node agent (the CNI double) hands it each pod's network namespace over ZDS,
and the daemon serves 15001/15006/15008 inside every enrolled pod. The pods are network namespaces
on one bridge with istio-cni's in-pod rules (mesh_box.py), all HBONE workloads on node-a in the
local config; the WorkloadInfo the double sends matches them by namespace + service account + name.

Each test is independent: its own namespaces, socket and daemon, removed by name/PID in fixtures.
"""
import os
import socket

import pytest

import cni_double as zds
from cni_double import CniDouble
from daemon import http, socket_copies, wait_for
from mesh_box import INBOUND_HBONE, INBOUND_PLAINTEXT, OUTBOUND, MeshBox

POD_PORTS = {OUTBOUND, INBOUND_PLAINTEXT, INBOUND_HBONE}
MANAGER = "workload proxy manager"


# -- fixtures (finalized in reverse: the daemon first, then the double, then the namespaces) ----

@pytest.fixture
def box():
    b = MeshBox(pods=3)
    yield b
    b.cleanup()


@pytest.fixture
def cni():
    double = CniDouble()
    double.start()
    yield double
    double.stop()


def start(start_daemon, box, cni, **env):
    daemon = start_daemon(local_config=box.local_config(), extra_env={
        "INPOD_UDS": cni.path, "NODE_NAME": box.node, "UNSTABLE_ENABLE_SOCKS5": "false", **env})
    wait_for(lambda: cni.connected or daemon.proc.poll() is not None, 60, "the daemon's ZDS connection")
    assert daemon.proc.poll() is None, f"the daemon exited:\n{daemon.log()[-4000:]}"
    return daemon


# -- observation helpers -----------------------------------------------------------------------

def readiness(daemon):
    """(status, body) of GET /healthz/ready, or None while it does not answer."""
    try:
        return http(daemon.ports["readiness"], "/healthz/ready", timeout=2)
    except OSError:
        return None


def wait_not_ready_naming(daemon, *names, timeout=30):
    def check():
        answer = readiness(daemon)
        return answer if answer and answer[0] == 500 and all(n in answer[1] for n in names) else None
    return wait_for(check, timeout, f"readiness 500 naming {names}")


def wait_ready(daemon, timeout=30):
    wait_for(lambda: (readiness(daemon) or (0,))[0] == 200 or daemon.proc.poll() is not None, timeout,
             "readiness 200")
    assert daemon.proc.poll() is None, f"the daemon exited:\n{daemon.log()[-4000:]}"
    assert readiness(daemon) == (200, "ready\n")


def workload_state(daemon):
    return daemon.config_dump().get("workloadState", {})


def serving(pod):
    """Whether the pod namespace has listeners on 15001, 15006 and 15008."""
    return POD_PORTS <= set(pod.listeners())


def not_serving(pod):
    return not POD_PORTS & set(pod.listeners())


def listener_inodes(pod):
    listeners = pod.listeners()
    return {port: listeners.get(port) for port in POD_PORTS}


def enrol(cni, pods):
    """Add every pod (each acked with no error), then SnapshotSent (acked with no error)."""
    for pod in pods:
        assert cni.add(**pod.info()) == "", f"Add {pod.name}"
    assert cni.snapshot_sent() == ""


def certificates_available(daemon, pods):
    certs = {c["identity"]: c["state"] for c in daemon.config_dump().get("certificates", [])}
    return all(certs.get(p.identity) == "Available" for p in pods)


def access_lines(daemon):
    return [l for l in daemon.log().splitlines() if "\taccess\tconnection complete" in l]


# -- a. hello, snapshot, readiness, workloadState ----------------------------------------------

def test_hello_adds_snapshot_readiness_and_workload_state(box, cni, start_daemon):
    daemon = start(start_daemon, box, cni)
    assert cni.hello_received and cni.hellos[0] == bytes([0x08, 0x01]), "a bare ZdsHello{V1} first"
    wait_not_ready_naming(daemon, MANAGER)

    for pod in box.pods:
        assert cni.add(**pod.info()) == ""
    # Every pod added, but no snapshot yet on this connection: still not ready.
    status, body = readiness(daemon)
    assert status == 500 and MANAGER in body, body

    assert cni.snapshot_sent() == ""
    wait_ready(daemon)
    state = workload_state(daemon)
    for pod in box.pods:
        assert pod.uid in state, state
        assert state[pod.uid]["state"] == "Up", state[pod.uid]
        assert state[pod.uid]["info"] == {"name": pod.name, "namespace": pod.namespace,
                                          "serviceAccount": pod.service_account}, state[pod.uid]
    assert set(state) == {p.uid for p in box.pods}
    assert cni.acks == [""] * (len(box.pods) + 1)
    assert cni.probe() and not cni.unsolicited, "ztunnel sends nothing but acks"
    assert cni.connections == 1 and daemon.proc.poll() is None
    # §15: the workload manager's families, without the istio_ prefix.
    status, body = http(daemon.ports["stats"], "/metrics")
    assert status == 200
    samples = dict(l.rsplit(" ", 1) for l in body.splitlines() if l.startswith("workload_manager_"))
    n = str(len(box.pods))
    assert samples == {"workload_manager_active_proxy_count": n, "workload_manager_pending_proxy_count": "0",
                       "workload_manager_proxies_started_total": n, "workload_manager_proxies_stopped_total": "0"}, samples


def transparent_flags(pid, inodes):
    """IP_TRANSPARENT / IPV6_TRANSPARENT of each listening socket of process `pid` whose inode is
    in `inodes`, read from a copy of its fd (pidfd_getfd; the NetWorker is dumpable)."""
    flags = {}
    for inode, s in socket_copies(pid):
        if inode not in inodes:
            continue
        if s.family == socket.AF_INET6:
            flags[inode] = s.getsockopt(socket.IPPROTO_IPV6, 75) == 1  # IPV6_TRANSPARENT
        else:
            flags[inode] = s.getsockopt(socket.IPPROTO_IP, 19) == 1  # IP_TRANSPARENT
    return flags


@pytest.mark.parametrize("setting,expected", [(None, True), ("true", True), ("false", False)])
def test_pod_listeners_are_transparent_unless_enable_orig_src_is_false(box, cni, start_daemon, setting, expected):
    """ENABLE_ORIG_SRC unset or true: each pod listener transparent (what TPROXY rules deliver
    to), as upstream (unset: where the kernel allows; true: required); false: none. What the
    application sees: test_inpod_mesh.py."""
    a = box.pod("a")
    daemon = start(start_daemon, box, cni, **({"ENABLE_ORIG_SRC": setting} if setting else {}))
    enrol(cni, [a])
    wait_for(lambda: serving(a), 10, f"listeners in {a.netns}")
    inodes = set().union(*listener_inodes(a).values())
    (networker,) = daemon.workers("net-worker")
    flags = transparent_flags(networker, inodes)
    assert set(flags) == inodes, (flags, inodes)
    assert all(flag == expected for flag in flags.values()), flags


# -- b. listeners in the pod namespace, withdrawn on Del ---------------------------------------

def test_listeners_are_made_in_the_pod_and_withdrawn_on_delete(box, cni, start_daemon):
    a, b = box.pod("a"), box.pod("b")
    daemon = start(start_daemon, box, cni)
    enrol(cni, [a, b])
    for pod in (a, b):
        wait_for(lambda: serving(pod), 10, f"15001, 15006 and 15008 listening in {pod.netns}")
    assert not serving(box.pod("c")), "nothing in a pod that was never added"
    wait_ready(daemon)

    assert cni.delete(a.uid) == ""
    wait_for(lambda: not_serving(a), 10, f"{a.netns}'s listeners withdrawn")
    wait_for(lambda: a.uid not in workload_state(daemon), 10, "the deleted pod out of workloadState")
    assert serving(b) and workload_state(daemon)[b.uid]["state"] == "Up"
    assert cni.delete("no-such-uid") == "", "Del of an unknown uid is acked ok (§8.7)"
    wait_ready(daemon)


def test_past_the_pod_cap_an_add_is_refused_and_room_made_by_a_delete_is_taken(box, cni, start_daemon):
    """The Supervisor enrols at most ZTUNNEL_MAX_PODS pods (1,024 by default; 2 here): istio-cni's
    Add for one more is answered with an error and nothing is made in its namespace, the pods
    served keep serving; once one is deleted, the next Add is taken."""
    a, b, c = box.pod("a"), box.pod("b"), box.pod("c")
    daemon = start(start_daemon, box, cni, ZTUNNEL_MAX_PODS="2")
    enrol(cni, [a, b])
    for pod in (a, b):
        wait_for(lambda: serving(pod), 10, f"{pod.netns} served")
    error = cni.add(**c.info())
    assert error == "failure to start proxy : 2 pods are enrolled on this node already", error
    assert not_serving(c) and c.uid not in workload_state(daemon) and serving(a) and serving(b)
    assert daemon.proc.poll() is None
    assert cni.delete(a.uid) == ""
    wait_for(lambda: not_serving(a), 10, f"{a.netns}'s listeners withdrawn")
    assert cni.add(**c.info()) == ""
    wait_for(lambda: serving(c), 10, f"{c.netns} served")


# -- c. same-node traffic over HBONE with both identities ---------------------------------------

def test_same_node_traffic_is_captured_and_carried_with_both_identities(box, cni, start_daemon):
    a, b = box.pod("a"), box.pod("b")
    echo = b.echo_server(8080)
    daemon = start(start_daemon, box, cni)
    enrol(cni, [a, b])
    wait_ready(daemon)
    for pod in (a, b):
        wait_for(lambda: serving(pod), 10, f"{pod.netns} served")
    wait_for(lambda: certificates_available(daemon, [a, b]), 30, "both pods' certificates")

    payload = os.urandom(256 * 1024)
    assert a.round_trip(b.ip, 8080, payload, timeout=20) == payload  # captured on a's 15001

    def both_sides():
        lines = access_lines(daemon)
        out = [l for l in lines if "direction=outbound" in l]
        inb = [l for l in lines if "direction=inbound" in l]
        return (out, inb) if out and inb else None
    outbound, inbound = wait_for(both_sides, 10, "outbound and inbound access-log lines")
    assert len(outbound) == 1 and len(inbound) == 1, (outbound, inbound)
    for line in outbound + inbound:
        assert f"src.identity={a.identity}" in line and f"dst.identity={b.identity}" in line, line
        assert "error=" not in line, line
    assert f"src.addr={a.ip}:" in outbound[0], outbound[0]
    assert f"dst.addr={b.ip}:{INBOUND_HBONE}" in outbound[0], outbound[0]
    assert f"src.workload={a.name}" in outbound[0] and f"dst.workload={b.name}" in outbound[0], outbound[0]
    assert f"bytes_sent={len(payload)}" in outbound[0] and f"bytes_recv={len(payload)}" in outbound[0], outbound[0]
    box.stop(echo.pid)


# -- d. a pod whose listeners cannot be made: refused, retried, others unaffected ---------------

def test_a_pod_whose_port_is_taken_is_refused_retried_and_others_serve(box, cni, start_daemon):
    a, b, c = box.pods
    holder = c.hold_port(INBOUND_HBONE, reuseport=False)  # 15008 taken in c: the daemon cannot bind it
    b.echo_server(8080)
    c.echo_server(8080)
    daemon = start(start_daemon, box, cni)

    assert cni.add(**a.info()) == ""
    assert cni.add(**b.info()) == ""
    error = cni.add(**c.info())
    assert error.startswith("failure to start proxy"), error
    assert cni.snapshot_sent() == ""

    # Readiness names the pending pod (once the NetWorker is up: before, only the tasks are named).
    wait_for(lambda: (lambda r: r and r[0] == 500 and MANAGER in r[1] and (c.uid in r[1] or c.name in r[1]))(
        readiness(daemon)), 30, "readiness 500 naming the pending pod")
    state = workload_state(daemon)
    assert state[a.uid]["state"] == "Up" and state[b.uid]["state"] == "Up", state
    assert c.uid not in state or state[c.uid]["state"] == "Pending", state
    for pod in (a, b):
        wait_for(lambda: serving(pod), 10, f"{pod.netns} served")
    wait_for(lambda: certificates_available(daemon, [a, b]), 30, "a's and b's certificates")
    assert a.round_trip(b.ip, 8080, b"still serving", timeout=20) == b"still serving"
    assert cni.connections == 1, "a pod that fails to start does not cost the connection"
    assert daemon.proc.poll() is None

    box.stop(holder.pid)  # the port is free: the 5 s retry brings c up
    wait_for(lambda: (workload_state(daemon).get(c.uid) or {}).get("state") == "Up", 30, "c Up after the retry")
    wait_for(lambda: serving(c), 10, f"{c.netns} served")
    wait_ready(daemon)
    wait_for(lambda: certificates_available(daemon, [c]), 30, "c's certificate")
    assert a.round_trip(c.ip, 8080, b"now c too", timeout=20) == b"now c too"
    assert cni.connections == 1


# -- e. malformed input: error ack, the daemon stays up, reconnects, pods keep listeners --------

def test_malformed_requests_are_refused_without_harm(box, cni, start_daemon):
    a, b = box.pod("a"), box.pod("b")
    daemon = start(start_daemon, box, cni)
    enrol(cni, [a, b])
    wait_ready(daemon)
    for pod in (a, b):
        wait_for(lambda: serving(pod), 10, f"{pod.netns} served")
    before = {pod.key: listener_inodes(pod) for pod in (a, b)}
    cni.replay_on_connect = True  # as the real agent does on every (re)connection

    info = zds.encode_workload_info(a.name, a.namespace, a.service_account)
    fd_a = os.open(a.netns_path, os.O_RDONLY)
    fd_b = os.open(b.netns_path, os.O_RDONLY)
    cases = [
        ("does not decode", b"\x0a\x10\x0a\x02", ()),
        ("Add without fd", zds.encode_add(a.uid, info), ()),
        ("Add with two fds", zds.encode_add(a.uid, info), (fd_a, fd_b)),
        ("Add without workload_info", zds.encode_add(a.uid), (fd_a,)),
        ("fd on a Del", zds.encode_del(b.uid), (fd_a,)),  # refused whole: b is not deleted
    ]
    try:
        for what, message, fds in cases:
            connections = cni.connections
            error = cni.send_raw(message, fds=fds)
            assert error, f"{what}: an error ack, got an empty one"
            cni.wait_connected(30, count=connections + 1)
            assert cni.wait_replayed(connections + 1) == ["", "", ""], what
            assert daemon.proc.poll() is None, f"{what}: the daemon exited:\n{daemon.log()[-4000:]}"
            wait_ready(daemon)
            for pod in (a, b):
                assert listener_inodes(pod) == before[pod.key], f"{what}: {pod.netns}'s listeners were remade"
            state = workload_state(daemon)
            assert state[a.uid]["state"] == "Up" and state[b.uid]["state"] == "Up", (what, state)
    finally:
        os.close(fd_a)
        os.close(fd_b)


# -- f. reconnect: pods kept without new listeners, a pod missing from the replay drained --------

def test_reconnect_keeps_replayed_pods_and_drains_the_missing_one(box, cni, start_daemon):
    a, b, c = box.pods
    b.echo_server(8080)
    daemon = start(start_daemon, box, cni)
    enrol(cni, box.pods)
    wait_ready(daemon)
    for pod in box.pods:
        wait_for(lambda: serving(pod), 10, f"{pod.netns} served")
    before = {pod.key: listener_inodes(pod) for pod in box.pods}

    cni.forget(c.uid)  # the agent no longer knows c: it will be missing from the replay
    cni.disconnect()
    cni.wait_connected(30, count=2)  # reconnected, with backoff
    # A new connection without its snapshot yet: not ready, but the pods keep their listeners.
    wait_not_ready_naming(daemon, MANAGER)
    for pod in box.pods:
        assert listener_inodes(pod) == before[pod.key], f"{pod.netns}'s listeners changed before the replay"
    wait_for(lambda: certificates_available(daemon, [a, b]), 30, "a's and b's certificates")
    assert a.round_trip(b.ip, 8080, b"while reconnecting", timeout=20) == b"while reconnecting"

    assert cni.replay() == ["", "", ""]  # Add a, Add b, SnapshotSent
    wait_ready(daemon)
    wait_for(lambda: not_serving(c), 10, "c, missing from the replay, drained")
    wait_for(lambda: c.uid not in workload_state(daemon), 10, "c out of workloadState")
    for pod in (a, b):
        assert listener_inodes(pod) == before[pod.key], f"{pod.netns}'s listeners were remade"
        assert workload_state(daemon)[pod.uid]["state"] == "Up"
    assert a.round_trip(b.ip, 8080, b"after the replay", timeout=20) == b"after the replay"
    assert daemon.proc.poll() is None and cni.probe()


def test_without_a_socket_pool_each_connection_asks_the_supervisor(box, cni, start_daemon):
    """ZTUNNEL_POD_SOCKET_POOL=0 (the benchmark's comparison): no sockets kept ready; each
    connection of a pod asks the Supervisor for one made in the pod's namespace, and traffic
    still flows, repeatedly."""
    a, b = box.pod("a"), box.pod("b")
    echo = b.echo_server(8080)
    daemon = start(start_daemon, box, cni, ZTUNNEL_POD_SOCKET_POOL="0")
    enrol(cni, [a, b])
    wait_ready(daemon)
    wait_for(lambda: certificates_available(daemon, [a, b]), 30, "both pods' certificates")
    for n in range(5):
        payload = os.urandom(1024)
        assert a.round_trip(b.ip, 8080, payload, timeout=20) == payload, f"connection {n}"
    box.stop(echo.pid)


# -- g. namespaces that are not a pod's own are refused ------------------------------------

def test_an_add_whose_fd_is_not_the_pods_own_network_namespace_is_refused(box, cni, start_daemon):
    """The Supervisor's checks on the fd istio-cni hands over (InPod.add): a regular file, a
    namespace of another type, ztunnel's own network namespace and another enrolled pod's are
    each refused with an error ack, nothing is made in them, and the pods already served keep
    their listeners."""
    a, b, c = box.pods
    daemon = start(start_daemon, box, cni)
    enrol(cni, [a])
    wait_ready(daemon)
    wait_for(lambda: serving(a), 10, f"{a.netns} served")
    before = listener_inodes(a)
    info = dict(name=c.name, namespace=c.namespace, service_account=c.service_account, remember=False)
    cases = [
        ("a regular file", "/etc/hostname", "is not a network namespace"),
        ("a mount namespace", "/proc/self/ns/mnt", "is not a network namespace"),
        ("ztunnel's own namespace", f"/proc/{daemon.pid}/ns/net", "is ztunnel's own"),
        ("pod a's namespace", a.netns_path, f"is pod {a.uid}'s"),
    ]
    for what, path, expected in cases:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            error = cni.add(uid=c.uid, netns_path=path, fds=[fd], **info)
        finally:
            os.close(fd)
        assert error.startswith("failure to start proxy : ") and expected in error, (what, error)
        assert not_serving(c) and c.uid not in workload_state(daemon), what
        assert listener_inodes(a) == before, f"{what}: pod a's listeners were remade"
    assert daemon.proc.poll() is None
    # And then the real one is taken.
    assert cni.add(**c.info()) == ""
    wait_for(lambda: serving(c), 10, f"{c.netns} served")


def test_a_networker_gets_no_sockets_for_an_unserved_pod_and_is_held_to_its_budget(box, cni, start_daemon):
    """What a compromised NetWorker can ask the Supervisor for in in-pod mode (fault probes that
    send raw podSocketsWanted frames): sockets in a pod that is not served are refused; 200
    requests of 64 at once pass the 4,096 a second budget (in whichever one-second windows they land) and the rest are refused; the NetWorker
    is not killed for either (a race with a pod's removal looks the same)."""
    a = box.pod("a")
    from test_sandbox import inject
    daemon = start(start_daemon, box, cni, ZTUNNEL_DEBUG_FAULT_INJECTION="true", RUST_LOG="debug")
    enrol(cni, [a])
    wait_ready(daemon)
    (net,) = daemon.workers("net-worker")
    inject(daemon, "pod-sockets-unserved")
    wait_for(lambda: "pod sockets asked for a pod not served" in daemon.log(), 10, "the refusal for an unserved pod")
    assert "uid=Kubernetes//Pod/nowhere/not-served" in next(
        l for l in daemon.log().splitlines() if "pod sockets asked for a pod not served" in l)
    inject(daemon, "pod-sockets-flood")
    wait_for(lambda: "asked for more than 4096 pod sockets this second; refused" in daemon.log(), 10, "the budget's refusal")
    assert daemon.workers("net-worker") == [net] and not daemon.audit_events("worker_exit"), daemon.audit()
