"""The mesh from istiod (ISTIO_COMPAT §6, §7): the xDS worker holds one delta ADS stream to a
stand-in for istiod written from the spec (xds_double.py), checks every resource, and publishes
the accepted set to the NetWorkers as a sealed memfd through the Supervisor. These tests use the
real binaries and real traffic: a workload pushed over xDS is reachable through SOCKS5 over HBONE;
a bad resource is NACKed while the good ones apply; a DENY policy pushed later refuses the next
connection; a restarted xDS worker resubscribes with the versions it held; a restarted NetWorker
serves the last model while istiod is down."""
import os
import threading
import signal

import pytest

from daemon import EchoServer, http, proc_status, socks5_connect, wait_for
from test_outbound_hbone import round_trip

grpc = pytest.importorskip("grpc")
import xds_double as x  # noqa: E402

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
ECHO_ID = "spiffe://cluster.local/ns/shop/sa/echo"
ECHO_HOST = "echo.shop.svc.cluster.local"
CLIENT_UID = "test//Pod/default/client-1"
ECHO_UID = "test//Pod/shop/echo-1"


def mesh(xds, echo_port):
    xds.set_resource(x.ADDRESS, CLIENT_UID, x.address_of_workload(x.workload(
        CLIENT_UID, "client-1", "default", addresses=["127.0.0.3"], service_account="client", node="node-a")))
    xds.set_resource(x.ADDRESS, ECHO_UID, x.address_of_workload(x.workload(
        ECHO_UID, "echo-1", "shop", addresses=["127.0.0.2"], service_account="echo", node="node-a",
        services={f"shop/{ECHO_HOST}": {80: echo_port}})))
    xds.set_resource(x.ADDRESS, f"shop/{ECHO_HOST}", x.address_of_service(x.service(
        "echo", "shop", ECHO_HOST, addresses=[("", "10.96.0.9")], ports=[(80, echo_port)])))


@pytest.fixture
def meshed(start_daemon, xds):
    """An echo workload and its client, known only from xDS; the daemon ready with both
    identities."""
    echo = EchoServer(host="127.0.0.2")
    mesh(xds, echo.port)
    daemon = start(start_daemon, xds)
    daemon.wait_ready()
    wait_for(lambda: identities_ready(daemon), 30, "both workload identities")
    yield daemon
    echo.close()


def start(start_daemon, xds, extra_env=None):
    env = {"XDS_ADDRESS": f"https://127.0.0.1:{xds.port}", "XDS_ROOT_CA": xds.root_pem_path,
           "AUTH_TOKEN": "xds-token", "ISTIO_META_CLUSTER_ID": "test-cluster", "POD_NAME": "ztunnel-abc",
           "POD_NAMESPACE": "istio-system", "INSTANCE_IP": "10.0.0.42", "NODE_NAME": "node-a",
           "UNSTABLE_ENABLE_SOCKS5": "true", "ZTUNNEL_DEBUG_FAULT_INJECTION": "false",
           "ISTIO_META_ISTIO_VERSION": "1.27.0", "ISTIO_META_DNS_CAPTURE": "true",
           "ISTIO_METAJSON_LABELS": '{"app": "ztunnel", "n": 2}', "XDS_HEADER_X_TENANT": "blue"}
    env.update(extra_env or {})
    return start_daemon(local_config=False, extra_env=env, hbone_wildcard=True)


def identities_ready(daemon, since=0):
    """Both identities logged as available (in the log after offset `since`)."""
    lines = [l for l in daemon.log()[since:].splitlines() if "identity available" in l]
    return all(any(f"identity={i}" in l for l in lines) for i in (CLIENT_ID, ECHO_ID))


def echo_through_mesh(daemon, payload=b"over xds"):
    """SOCKS5 from the client workload to the echo service's VIP; the echoed bytes, or the
    SOCKS5 reply code when refused."""
    sock, code = socks5_connect(daemon.ports["socks5"], 80, "10.96.0.9", source="127.0.0.3")
    with sock:
        return round_trip(sock, payload) if code == 0 else code


def acked(xds, type_url, since=0):
    return xds.wait_for(lambda _, r: r["type_url"] == type_url and x.is_ack(r) and r["nonce_known"], 30, since=since)


def test_a_mesh_pushed_by_istiod_carries_traffic_over_hbone(start_daemon, xds):
    """Node, token and cluster id as §6.2 says; readiness and the data-plane listeners wait for
    both types (§6.4); then a workload known only from xDS is reached over HBONE with both
    identities."""
    echo = EchoServer(host="127.0.0.2")
    try:
        xds.set_outage(True)
        daemon = start(start_daemon, xds)
        # istiod down: the daemon is up but not ready, and names what it waits for.
        wait_for(lambda: xds.stream_count >= 1, 30, "a first xDS stream")
        status, body = wait_for(lambda: (lambda r: r if r[0] == 500 else None)(http(daemon.ports["readiness"], "/healthz/ready")),
                                30, "readiness answering")
        assert "state manager" in body, body  # upstream's task name (§16)
        (xdsw,) = daemon.workers("xds-worker")

        mesh(xds, echo.port)
        xds.set_outage(False)
        first = xds.wait_for(lambda _, r: r["initial"] and r["type_url"] == x.ADDRESS, 30)
        node = first["node"]
        assert node["id"] == "ztunnel~10.0.0.42~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
        assert node["metadata"]["NAME"] == "ztunnel-abc" and node["metadata"]["NAMESPACE"] == "istio-system"
        assert node["metadata"]["INSTANCE_IPS"] == "10.0.0.42" and node["metadata"]["CLUSTER_ID"] == "test-cluster"
        assert node["metadata"]["NODE_NAME"] == "node-a" and node["metadata"]["ISTIO_VERSION"] == "1.27.0"
        # Proxy metadata from the environment (§6.2): strings, and JSON as structured values.
        assert node["metadata"]["DNS_CAPTURE"] == "true"
        assert node["metadata"]["LABELS"] == {"app": "ztunnel", "n": 2}, node["metadata"]
        assert first["resource_names_subscribe"] == [] and first["initial_resource_versions"] == {}
        stream = xds.streams[first["stream"]]
        assert stream["authorization"] == "Bearer xds-token" and stream["clusterid"] == "test-cluster"
        assert stream["headers"].get("x_tenant") == "blue", stream["headers"]
        acked(xds, x.ADDRESS)
        acked(xds, x.AUTHORIZATION)

        daemon.wait_ready()
        wait_for(lambda: identities_ready(daemon), 30, "both workload identities, wanted from the xDS model")
        assert echo_through_mesh(daemon) == b"over xds"
        line = wait_for(lambda: next((l for l in daemon.log().splitlines()
                                      if "\taccess\tconnection complete" in l and "direction=outbound" in l), None),
                        10, "the outbound access line")
        assert f"src.identity={CLIENT_ID}" in line and f"dst.identity={ECHO_ID}" in line and f"dst.service={ECHO_HOST}" in line
        # The xDS worker's counters reach /metrics (§15): the refused streams of the outage and
        # the responses received.
        def counter(name):
            text = http(daemon.ports["stats"], "/metrics")[1]
            line = next((l for l in text.splitlines() if l.startswith(name + " ")), None)
            return int(line.split()[-1]) if line else 0
        wait_for(lambda: counter('istio_xds_message_total{url="type.googleapis.com/istio.workload.Address"}') >= 1
                 and counter('istio_xds_connection_terminations_total{reason="Error"}') >= 1, 30, "the xDS counters")
        assert counter('istio_xds_message_bytes_total{url="type.googleapis.com/istio.workload.Address"}') > 0
        assert counter('istio_build{component="ztunnel",tag="1.27.0"}') == 1
        dump = daemon.config_dump()
        assert {w["uid"] for w in dump["workloads"]} >= {CLIENT_UID, ECHO_UID}, dump["workloads"]

        # The worker that parses istiod's bytes is confined like the others.
        status = proc_status(xdsw)
        assert status["CapEff"] == "0000000000000000" and status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert status["CapPrm"] == "0000000000000000" and status["CapBnd"] == "0000000000000000"
        assert set(status["Uid"].split()) == {"65534"} and set(status["Gid"].split()) == {"65534"}
        # Not dumpable (it holds istiod's token): its /proc entries stay root's, not its uid's.
        assert os.stat(f"/proc/{xdsw}/status").st_uid == 0
    finally:
        echo.close()


def test_a_bad_resource_is_nacked_while_the_good_ones_apply(start_daemon, xds):
    """Partial acceptance (§6.3): one push with a good workload and one whose IP has 5 bytes; the
    NACK names the bad one, the good one is in force, and the bad one's previous version stays."""
    echo = EchoServer(host="127.0.0.2")
    try:
        mesh(xds, echo.port)
        daemon = start(start_daemon, xds)
        daemon.wait_ready()
        mark = xds.mark()
        bad = x.address_of_workload(x.workload(ECHO_UID, "echo-1", "shop", addresses=[b"\x7f\x00\x00\x02\x00"],
                                               service_account="echo"))
        good = x.address_of_workload(x.workload("test//Pod/default/new-1", "new-1", "default", addresses=["127.0.0.7"]))
        xds.push_raw(x.ADDRESS, [(ECHO_UID, "bad-1", bad), ("test//Pod/default/new-1", "v1", good)])
        nack = xds.wait_for(lambda _, r: x.is_nack(r), 30, since=mark)
        assert nack["error_detail"].startswith(f"{ECHO_UID}: ") and "new-1" not in nack["error_detail"], nack["error_detail"]
        wait_for(lambda: "test//Pod/default/new-1" in {w["uid"] for w in daemon.config_dump()["workloads"]}, 30,
                 "the good workload in force")
        assert "127.0.0.2" in next(w for w in daemon.config_dump()["workloads"] if w["uid"] == ECHO_UID)["workloadIps"]
        wait_for(lambda: identities_ready(daemon), 30, "identities")
        assert echo_through_mesh(daemon) == b"over xds"

        # A reconnect does not claim the refused version.
        mark = xds.mark()
        xds.end_streams()
        again = xds.wait_for(lambda _, r: r["initial"] and r["type_url"] == x.ADDRESS, 30, since=mark)
        assert again["initial_resource_versions"].get(ECHO_UID) != "bad-1"
        assert again["initial_resource_versions"].get("test//Pod/default/new-1") == "v1"
    finally:
        echo.close()


def test_a_deny_policy_from_istiod_closes_the_live_connection_and_refuses_the_next(meshed, xds):
    """§12: when policies change, live connections are checked again and closed if now denied."""
    daemon = meshed
    live, code = socks5_connect(daemon.ports["socks5"], 80, "10.96.0.9", source="127.0.0.3")
    assert code == 0
    live.sendall(b"ping")
    assert live.recv(100) == b"ping"
    mark = xds.mark()
    deny = x.authorization("deny-client", "shop", scope="NAMESPACE", action="DENY",
                           groups=[x.auth_group(x.auth_rules(x.auth_match(principals=[{"exact": "cluster.local/ns/default/sa/client"}])))])
    xds.set_resource(x.AUTHORIZATION, "shop/deny-client", deny)
    acked(xds, x.AUTHORIZATION, since=mark)
    wait_for(lambda: "policies=1" in daemon.log(), 30, "the policy in the NetWorker's model")
    live.settimeout(30)
    try:
        ended = live.recv(100)
    except ConnectionResetError:
        ended = b""
    live.close()
    assert ended == b"", ended
    assert echo_through_mesh(daemon) != b"over xds"
    wait_for(lambda: "shop/deny-client" in daemon.log(), 10, "the refusal naming the policy")


def test_workers_restart_without_losing_the_mesh(meshed, xds):
    """kill -9 the xDS worker: the NetWorker keeps serving, and the new xDS worker resubscribes
    with the versions it held (§6.3 initial_resource_versions). Then, with istiod down, kill -9
    the NetWorker: its successor gets the model from the Supervisor and serves at once."""
    daemon = meshed
    versions = {name: version for name, (version, _) in xds.resources(x.ADDRESS).items()}

    xds.set_outage(True)
    mark = xds.mark()
    mark_streams = xds.stream_count
    (old,) = daemon.workers("xds-worker")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: daemon.workers("xds-worker") and daemon.workers("xds-worker") != [old], 30, "a new xDS worker")
    wait_for(lambda: xds.stream_count > mark_streams, 30, "the new worker trying istiod")
    assert echo_through_mesh(daemon) == b"over xds"  # served from the last model, istiod down
    xds.set_outage(False)
    resumed = xds.wait_for(lambda _, r: r["initial"] and r["type_url"] == x.ADDRESS, 30, since=mark)
    assert resumed["initial_resource_versions"] == versions
    acked(xds, x.AUTHORIZATION, since=mark)
    xds.set_outage(True)

    (net,) = daemon.workers("net-worker")
    logged = len(daemon.log())
    os.kill(net, signal.SIGKILL)
    wait_for(lambda: daemon.workers("net-worker") and daemon.workers("net-worker") != [net], 30, "a new NetWorker")
    daemon.wait_ready()
    wait_for(lambda: identities_ready(daemon, since=logged), 30, "the new NetWorker's identities")
    assert echo_through_mesh(daemon, b"after restart") == b"after restart"


def test_xds_worker_kill_under_traffic_refuses_no_connection(meshed, xds):
    """kill -9 the xDS worker while connections keep coming: none is refused or broken (the
    NetWorker never depended on it for a connection), a connection open across the kill keeps
    carrying bytes, the model in /config_dump is the same, and the replacement resubscribes."""
    daemon = meshed
    before_kill = {w["uid"] for w in daemon.config_dump()["workloads"]}
    sock, code = socks5_connect(daemon.ports["socks5"], 80, "10.96.0.9", source="127.0.0.3")
    assert code == 0
    outcomes, stop = [], threading.Event()

    def client():
        while not stop.is_set() and len(outcomes) < 5000:
            try:
                outcomes.append(echo_through_mesh(daemon, b"ping"))
            except OSError as error:
                outcomes.append(f"error: {error}")

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: len(outcomes) >= 10, 30, "connections before the kill")
        mark = xds.mark()
        (old,) = daemon.workers("xds-worker")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: daemon.workers("xds-worker") and daemon.workers("xds-worker") != [old], 30, "a new xDS worker")
        acked(xds, x.AUTHORIZATION, since=mark)
        count = len(outcomes)
        wait_for(lambda: len(outcomes) >= count + 10, 30, "connections after the replacement resubscribed")
    finally:
        stop.set()
        thread.join(timeout=60)
    with sock:
        assert round_trip(sock, b"across the kill") == b"across the kill"
    bad = [o for o in outcomes if o != b"ping"]
    assert not bad, f"{len(bad)} of {len(outcomes)} connections failed: {bad[:5]}"
    assert {w["uid"] for w in daemon.config_dump()["workloads"]} == before_kill


def test_the_xds_worker_answers_the_supervisor_while_istiod_does_not_answer(start_daemon, tmp_path):
    """The connection to istiod (name lookup, TCP, TLS: up to 10 s) is made on a thread of its
    own: while a server that accepts and never answers holds the handshake, the xDS worker still
    handles what the Supervisor relays (here a fault probe). Before, it ran the probe only once
    the attempt had failed (its `xds stream ended` line came first)."""
    import socket
    from identities import MiniCA
    from test_sandbox import FAULTS, fault_line, inject
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted: the kernel completes TCP, nobody answers the ClientHello
    ca = MiniCA()
    ca.issue(str(tmp_path / "ca"), "unused")
    try:
        daemon = start_daemon(local_config=False, extra_env={
            **FAULTS, "XDS_ADDRESS": f"https://127.0.0.1:{silent.getsockname()[1]}",
            "XDS_ROOT_CA": str(tmp_path / "ca" / "root-cert.pem"), "AUTH_TOKEN": "t"})
        wait_for(lambda: daemon.workers("xds-worker") and "xds-worker[0] is ready" in daemon.log(), 30, "the xDS worker")

        def admin_up():
            try:
                return http(daemon.ports["admin"], "/config_dump")[0] == 200
            except OSError:
                return False
        wait_for(admin_up, 30, "the admin endpoint")
        inject(daemon, "xds-open-file")
        wait_for(lambda: fault_line(daemon, "xds-open-file"), 30, "the probe's report")
        log = daemon.log()
        before = log[:log.index(fault_line(daemon, "xds-open-file"))]
        assert "xds stream ended" not in before, log[-3000:]
        # The attempt still ends at its deadline, and is tried again.
        wait_for(lambda: "xds stream ended" in daemon.log(), 30, "the attempt's end")
        assert "reason=ConnectionError" in next(l for l in daemon.log().splitlines() if "xds stream ended" in l)
    finally:
        silent.close()
