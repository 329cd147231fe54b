"""The process tree, each worker's confinement, readiness, /config_dump and the audit sink."""
import os

from daemon import RFC3339, http, proc_status, socks5_connect, wait_for


def test_tree_and_confinement(start_daemon):
    daemon = start_daemon(extra_env={"ZTUNNEL_NET_WORKERS": "2"})
    daemon.wait_ready()
    children = daemon.children()
    assert sorted(children.values()) == ["ztunnel-cert-worker", "ztunnel-net-worker", "ztunnel-net-worker"]
    for pid in children:
        status = proc_status(pid)
        assert status["Seccomp"] == "2", (pid, status)
        assert status["NoNewPrivs"] == "1"
        assert status["CapEff"] == "0000000000000000"
        assert status["CapPrm"] == "0000000000000000"
        assert status["CapBnd"] == "0000000000000000"
        # Each role has its own uid and gid (issue #6): a NetWorker cannot signal or trace the
        # CertWorker as "the same user".
        expected = "65532" if children[pid] == "ztunnel-cert-worker" else "65533"
        assert status["Uid"].split() == [expected] * 4
        assert status["Gid"].split() == [expected] * 4
    # The kernel gives /proc/PID of a non-dumpable process to root; a dumpable one keeps its uid.
    (cert,) = daemon.workers("cert-worker")
    assert os.stat(f"/proc/{cert}/status").st_uid == 0
    # Key memory (OpenSSL's secure heap) is locked in RAM: never swapped out.
    assert int(proc_status(cert)["VmLck"].split()[0]) > 0
    for net in daemon.workers("net-worker"):
        assert os.stat(f"/proc/{net}/status").st_uid == 65533
    # The Supervisor keeps a few capabilities, not all of them.
    supervisor = int(proc_status(daemon.pid)["CapEff"], 16)
    assert supervisor != 0 and supervisor & (1 << 21)  # CAP_SYS_ADMIN kept for setns
    assert not supervisor & (1 << 1)  # CAP_DAC_OVERRIDE dropped
    assert not supervisor & (1 << 19)  # CAP_SYS_PTRACE dropped


def test_readiness_config_dump_and_metrics(start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    assert http(daemon.ports["readiness"], "/healthz/ready") == (200, "ready\n")
    assert http(daemon.ports["readiness"], "/healthz/ready", method="POST")[0] == 405
    assert http(daemon.ports["readiness"], "/other")[0] == 404
    dump = daemon.config_dump()
    for key in ("workloads", "services", "policies", "staticConfig", "version", "config", "certificates"):
        assert key in dump
    processes = {(p["role"], p["index"]): p for p in dump["processes"]}
    assert set(processes) == {("cert-worker", 0), ("net-worker", 0)}
    live = daemon.children()
    for entry in processes.values():
        assert entry["state"] == "Running" and entry["restarts"] == 0
        assert live[entry["pid"]] == "ztunnel-" + entry["role"]
    status, body = http(daemon.ports["stats"], "/metrics")
    assert status == 200 and 'istio_build{component="ztunnel"' in body and body.endswith("# EOF\n")
    assert http(daemon.ports["admin"], "/debug/fault?kind=seccomp", method="POST")[0] == 404  # off by default


def test_socks5_relays_and_refuses_loops(start_daemon, echo_server):
    daemon = start_daemon()
    daemon.wait_ready()
    sock, code = socks5_connect(daemon.ports["socks5"], echo_server.port)
    with sock:
        assert code == 0
        payload = os.urandom(200_000)
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "relay closed early"
            received += chunk
        assert received == payload
        sock.shutdown(1)  # half-close passes through: the echo server closes, so do we
        assert sock.recv(10) == b""
    loop, code = socks5_connect(daemon.ports["socks5"], daemon.ports["socks5"])
    loop.close()
    assert code == 2  # not allowed: a loop back into the proxy


def test_audit_sink_is_ordered_json(start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    wait_for(lambda: len(daemon.audit_events("worker_ready")) == 2, 10, "two worker_ready events")
    events = daemon.audit()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(RFC3339.match(e["time"]) for e in events)
    names = [e["event"] for e in events]
    assert names[0] == "supervisor_start"
    assert names.count("worker_start") == 2
    # Audit events go to the audit sink only, not to the debug log.
    assert "supervisor_start" not in daemon.log() and '"seq"' not in daemon.log()
