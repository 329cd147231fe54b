"""Workers that die, misbehave or crash-loop."""
import os
import signal
import socket
import threading

from daemon import alive, http, wait_for


def replaced(daemon, role, old_pid):
    def check():
        pids = daemon.workers(role)
        return pids and old_pid not in pids and daemon.ready()
    wait_for(check, 30, f"a new {role} replacing {old_pid}")
    return daemon.workers(role)


def test_kill_networker_refuses_no_connection(start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    (old,) = daemon.workers("net-worker")
    outcomes = []
    stop = threading.Event()

    def client():
        # Connect in a loop across the kill: every connection must be accepted and answered,
        # by the old worker or, after waiting in the backlog, by its replacement.
        while not stop.is_set() or len(outcomes) < 20:
            try:
                status, _ = http(daemon.ports["readiness"], "/healthz/ready", timeout=30)
                outcomes.append(status)
            except ConnectionRefusedError:
                outcomes.append("refused")
            except OSError as error:
                outcomes.append(f"error: {error}")
            if len(outcomes) > 2000:
                break

    thread = threading.Thread(target=client)
    thread.start()
    wait_for(lambda: len(outcomes) >= 10, 30, "connections before the kill")
    os.kill(old, signal.SIGKILL)
    (new,) = replaced(daemon, "net-worker", old)
    before = len(outcomes)
    wait_for(lambda: len(outcomes) >= before + 10, 30, "connections after the replacement")
    stop.set()
    thread.join(timeout=60)
    assert "refused" not in outcomes
    # The one connection the killed process had already accepted dies with it (a reset); every
    # other connection, including those queued in the backlog during the restart, is answered.
    others = [o for o in outcomes if o not in (200, 500)]
    assert len(others) <= 1 and all("reset" in o or "empty" in o for o in others), others
    entry = next(p for p in daemon.config_dump()["processes"] if p["role"] == "net-worker")
    assert entry["pid"] == new and entry["restarts"] == 1
    assert entry["lastExitCause"] == "killed by signal SIGKILL"
    assert [e["cause"] for e in daemon.audit_events("worker_exit")] == ["killed by signal SIGKILL"]


def test_certworker_is_replaced(start_daemon):
    daemon = start_daemon()
    daemon.wait_ready()
    (old,) = daemon.workers("cert-worker")
    os.kill(old, signal.SIGKILL)
    replaced(daemon, "cert-worker", old)
    assert daemon.audit_events("worker_restart")[0]["role"] == "cert-worker"


def test_forbidden_syscall_kills_with_sigsys(start_daemon):
    daemon = start_daemon(extra_env={"ZTUNNEL_DEBUG_FAULT_INJECTION": "true"})
    daemon.wait_ready()
    (old,) = daemon.workers("net-worker")
    assert http(daemon.ports["admin"], "/debug/fault?kind=seccomp", method="POST")[0] == 200
    replaced(daemon, "net-worker", old)
    (exit_event,) = daemon.audit_events("worker_exit")
    assert exit_event["pid"] == old
    assert exit_event["cause"].startswith("killed by signal SIGSYS")


def test_garbage_on_ipc_is_a_security_event(start_daemon):
    daemon = start_daemon(extra_env={"ZTUNNEL_DEBUG_FAULT_INJECTION": "true"})
    daemon.wait_ready()
    (old,) = daemon.workers("net-worker")
    assert http(daemon.ports["admin"], "/debug/fault?kind=ipc-garbage", method="POST")[0] == 200
    replaced(daemon, "net-worker", old)
    (violation,) = daemon.audit_events("ipc_violation")
    assert violation["security"] is True and violation["pid"] == old and violation["role"] == "net-worker"
    (exit_event,) = daemon.audit_events("worker_exit")
    assert "IPC violation" in exit_event["cause"]
    assert "security: net-worker[0] violated the IPC protocol" in daemon.log()


def test_workers_that_never_get_ready_end_in_a_crash_loop(start_daemon):
    # A broken set-up (here: a static identity directory that does not exist) kills the
    # CertWorker before it is ready, every time: that is a crash loop, and the Supervisor gives up.
    daemon = start_daemon(extra_env={"ZTUNNEL_CRASH_LOOP_LIMIT": "3", "ZTUNNEL_RESTART_BACKOFF": "10ms",
                                     "ZTUNNEL_STATIC_IDENTITY_DIR": "/nonexistent/ztunnel-identities"})
    assert daemon.wait(timeout=60) == 1
    lines = [line for line in daemon.log().splitlines() if "crash loop" in line]
    assert len(lines) == 1 and "giving up" in lines[0] and "before becoming ready" in lines[0]
    (event,) = daemon.audit_events("crash_loop")
    assert event["exits"] == 3
    assert not daemon.children()  # no worker outlives the Supervisor


def test_serving_workers_are_replaced_forever(start_daemon):
    # Issue #6: a worker that was serving and dies (what a packet of death would do) is replaced
    # with capped backoff however often it happens; the node's proxy never gives up on it.
    daemon = start_daemon(extra_env={"ZTUNNEL_CRASH_LOOP_LIMIT": "3", "ZTUNNEL_RESTART_BACKOFF": "10ms",
                                     "ZTUNNEL_RESTART_BACKOFF_MAX": "50ms"})
    daemon.wait_ready()
    for _ in range(6):
        (old,) = daemon.workers("net-worker")
        os.kill(old, signal.SIGKILL)
        replaced(daemon, "net-worker", old)
    assert daemon.proc.poll() is None
    assert not daemon.audit_events("crash_loop")
    restarts = daemon.audit_events("worker_restart")
    assert len(restarts) == 6 and all(e["was_serving"] is True for e in restarts)
    assert [e["backoff_ms"] for e in restarts][:3] == [0, 10, 20]
    assert max(e["backoff_ms"] for e in restarts) == 50
    status, body = http(daemon.ports["stats"], "/metrics")
    assert status == 200
    assert 'ztunnel_worker_restarts_total{role="net-worker"} 6' in body.splitlines()
    assert 'ztunnel_worker_restarts_total{role="cert-worker"} 0' in body.splitlines()


def test_malformed_queries_do_not_crash_the_readiness_port(start_daemon):
    # Issue #6: `GET /healthz/ready?=` trapped in the query parser; five of them stopped the node.
    daemon = start_daemon()
    daemon.wait_ready()
    (worker,) = daemon.workers("net-worker")
    for target in ["/healthz/ready?=", "/healthz/ready?", "/healthz/ready?&&=&", "/healthz/ready?a==b", "/?=",
                   "/config_dump?=&=", "/healthz/ready?" + "a=b&" * 1000]:
        for port in ("readiness", "admin", "stats"):
            http(daemon.ports[port], target)
    assert daemon.ready()
    assert daemon.workers("net-worker") == [worker]
    assert not daemon.audit_events("worker_exit")


def test_a_local_config_that_does_not_parse_stops_the_start(start_daemon):
    # Serving with no model would allow what the file was written to deny: the NetWorker refuses
    # to start on it, and the Supervisor gives up after the crash-loop limit, naming the error.
    daemon = start_daemon(local_config="workloads:\n- namespace: shop\n  bogus: 1\n",
                          extra_env={"ZTUNNEL_CRASH_LOOP_LIMIT": "2", "ZTUNNEL_RESTART_BACKOFF": "10ms"})
    assert daemon.wait(timeout=60) == 1
    log = daemon.log()
    assert "LOCAL_XDS_PATH: workloads[0]" in log and "giving up" in log
