"""Start-up errors, arguments, and the drain."""
import os
import signal
import socket
import subprocess

from daemon import ZTUNNEL, alive, http, socks5_connect, wait_for


def run(args, env):
    return subprocess.run([ZTUNNEL, *args], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                          text=True, timeout=60)


def test_help_lists_every_setting_and_version_works():
    help_text = run(["--help"], {}).stdout
    for name in ("LOCAL_XDS_PATH", "TERMINATION_GRACE_PERIOD_SECONDS", "CONNECTION_TERMINATION_DEADLINE",
                 "ZTUNNEL_NET_WORKERS", "ZTUNNEL_SECCOMP_MODE", "ZTUNNEL_AUDIT_LOG", "--net-workers"):
        assert name in help_text
    version = run(["version"], {})
    assert version.returncode == 0 and version.stdout.startswith("ztunnel-swift")


def test_bad_values_stop_the_start_with_one_line(tmp_path):
    local = tmp_path / "local.yaml"
    local.write_text("workloads: []\n")
    cases = [
        ({"LOCAL_XDS_PATH": str(local), "ZTUNNEL_NET_WORKERS": "abc"}, [], "ZTUNNEL_NET_WORKERS"),
        ({"LOCAL_XDS_PATH": str(local)}, ["--net-workers", "0"], "ZTUNNEL_NET_WORKERS"),
        ({"LOCAL_XDS_PATH": str(local), "ZTUNNEL_ADMIN_ADDR": "nowhere"}, [], "ZTUNNEL_ADMIN_ADDR"),
        ({"LOCAL_XDS_PATH": str(tmp_path / "missing.yaml")}, [], "LOCAL_XDS_PATH"),
        ({}, [], "LOCAL_XDS_PATH"),
        ({"LOCAL_XDS_PATH": str(local), "ZTUNNEL_SECCOMP_DIR": str(tmp_path)}, [], "seccomp"),
        ({"LOCAL_XDS_PATH": str(local)}, ["proxy", "sidecar"], "proxy mode"),
        ({"LOCAL_XDS_PATH": str(local), "ZTUNNEL_WORKER_THREADS": "0%"}, [], "ZTUNNEL_WORKER_THREADS"),
        ({"LOCAL_XDS_PATH": str(local), "ZTUNNEL_CPU_LIMIT": "half"}, [], "ZTUNNEL_CPU_LIMIT"),
        # Upstream settings asking for what this daemon cannot give: refused, never ignored.
        ({"LOCAL_XDS_PATH": str(local), "TLS12_ENABLED": "true"}, [], "TLS12_ENABLED"),
        ({"LOCAL_XDS_PATH": str(local), "COMPLIANCE_POLICY": "pqc"}, [], "COMPLIANCE_POLICY=pqc"),
        ({"LOCAL_XDS_PATH": str(local), "COMPLIANCE_POLICY": "fips"}, [], "COMPLIANCE_POLICY"),
        ({"LOCAL_XDS_PATH": str(local), "PROXY_MODE": "dedicated"}, [], "PROXY_MODE=dedicated"),
        ({"LOCAL_XDS_PATH": str(local), "KEEPALIVE_TIME": "12h"}, [], "KEEPALIVE_TIME"),
        ({"LOCAL_XDS_PATH": str(local), "ENABLE_PROXY": "false"}, [], "ENABLE_PROXY=false"),
        ({"LOCAL_XDS_PATH": str(local), "ENABLE_ORIG_SRC": "sometimes"}, [], "ENABLE_ORIG_SRC"),
        # One uid per role (as root): a NetWorker sharing the key holder's uid could signal or
        # trace it.
        ({"LOCAL_XDS_PATH": str(local), "ZTUNNEL_NET_WORKER_UID": "65532"}, [], "ZTUNNEL_NET_WORKER_UID: it must differ"),
    ]
    for env, args, named in cases:
        result = run(args, env)
        assert result.returncode == 1, (env, args, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], (env, args, result.stderr)


def test_data_plane_threads_are_sized_from_the_cpu_limit_as_upstream(start_daemon):
    """An explicit CPU limit (ZTUNNEL_RESOURCE_CPU_LIMIT) and no ZTUNNEL_WORKER_THREADS: that many
    threads, split among the NetWorkers (rounded up); ZTUNNEL_CPU_LIMIT (the upstream chart's,
    from limits.cpu) caps the CPUs counted; an explicit ZTUNNEL_WORKER_THREADS wins."""
    daemon = start_daemon(extra_env={"ZTUNNEL_RESOURCE_CPU_LIMIT": "3", "ZTUNNEL_NET_WORKERS": "2"})
    daemon.wait_ready()
    lines = [l for l in daemon.log().splitlines() if "data-plane threads" in l]
    assert len(lines) == 2 and all("threads=2 in_all=3" in l for l in lines), lines
    daemon = start_daemon(extra_env={"ZTUNNEL_CPU_LIMIT": "1", "ZTUNNEL_WORKER_THREADS": "0"})
    daemon.wait_ready()
    assert "data-plane threads threads=1 in_all=1 cpus=" in daemon.log()
    daemon = start_daemon(extra_env={"ZTUNNEL_CPU_LIMIT": "3", "ZTUNNEL_WORKER_THREADS": "1"})
    daemon.wait_ready()
    assert "data-plane threads threads=1 in_all=1" in daemon.log()


def test_listener_in_use_is_named(start_daemon):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    daemon = start_daemon(extra_env={"ZTUNNEL_STATS_ADDR": f"127.0.0.1:{port}"})
    assert daemon.wait(timeout=30) == 1
    assert f"ZTUNNEL_STATS_ADDR=127.0.0.1:{port}" in daemon.log()
    blocker.close()


def test_sigterm_drains_live_connections_then_exits_zero(start_daemon, echo_server):
    daemon = start_daemon(extra_env={"CONNECTION_TERMINATION_DEADLINE": "20s"})
    daemon.wait_ready()
    workers = list(daemon.children())
    sock, code = socks5_connect(daemon.ports["socks5"], echo_server.port)
    assert code == 0
    sock.sendall(b"before")
    assert sock.recv(100) == b"before"
    daemon.signal(signal.SIGTERM)
    wait_for(lambda: daemon.audit_events("drain_start"), 10, "the drain to start")

    def refused():
        try:
            socket.create_connection(("127.0.0.1", daemon.ports["socks5"]), timeout=2).close()
            return False
        except ConnectionRefusedError:
            return True
    wait_for(refused, 10, "new connections to be refused")
    # The live connection still works while the drain waits for it.
    sock.sendall(b"during")
    assert sock.recv(100) == b"during"
    assert daemon.proc.poll() is None
    sock.close()
    # With no connection left, everything exits 0, well within the 20 s drain period.
    assert daemon.wait(timeout=20) == 0
    assert not any(alive(pid) for pid in workers)
    assert daemon.audit()[-1]["event"] == "supervisor_exit"


def test_quitquitquit_drains_the_whole_daemon_through_the_supervisor(start_daemon):
    """POST /quitquitquit on the admin port (§17): the NetWorker answers, asks the Supervisor
    (`shutdownRequest`), and the Supervisor records who asked, drains every worker and exits 0.
    A GET does nothing."""
    daemon = start_daemon()
    daemon.wait_ready()
    workers = list(daemon.children())
    (net,) = daemon.workers("net-worker")
    assert http(daemon.ports["admin"], "/quitquitquit")[0] == 405
    assert daemon.proc.poll() is None and not daemon.audit_events("shutdown_requested")
    status, body = http(daemon.ports["admin"], "/quitquitquit", method="POST")
    assert status == 200, body
    assert daemon.wait(timeout=20) == 0
    (asked,) = daemon.audit_events("shutdown_requested")
    assert asked["role"] == "net-worker" and asked["pid"] == net
    (drain,) = daemon.audit_events("drain_start")
    assert "quitquitquit" in drain["reason"] and "net-worker[0]" in drain["reason"], drain
    assert not any(alive(pid) for pid in workers)
    assert daemon.audit()[-1]["event"] == "supervisor_exit"


def test_drain_deadline_closes_what_is_left(start_daemon, echo_server):
    daemon = start_daemon(extra_env={"TERMINATION_GRACE_PERIOD_SECONDS": "3"})  # deadline 2 s
    daemon.wait_ready()
    sock, code = socks5_connect(daemon.ports["socks5"], echo_server.port, timeout=30)
    assert code == 0
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert sock.recv(100) == b""  # closed by the worker at the deadline
    sock.close()
    (drain,) = daemon.audit_events("drain_start")
    assert drain["deadline_ms"] == 2000


def test_second_sigint_exits_at_once(start_daemon, echo_server):
    daemon = start_daemon(extra_env={"CONNECTION_TERMINATION_DEADLINE": "60s"})
    daemon.wait_ready()
    workers = list(daemon.children())
    sock, _ = socks5_connect(daemon.ports["socks5"], echo_server.port)
    daemon.signal(signal.SIGINT)
    wait_for(lambda: daemon.audit_events("drain_start"), 10, "the drain to start")
    daemon.signal(signal.SIGINT)
    assert daemon.wait(timeout=10) == 0
    sock.close()
    assert not any(alive(pid) for pid in workers)


def test_rust_log_takes_upstreams_target_syntax(start_daemon, echo_server):
    """RUST_LOG as upstream's operators write it (§15.3): `warn,access=info` keeps the access
    lines and drops the processes' info lines; a value upstream accepts never stops the start."""
    daemon = start_daemon(extra_env={"RUST_LOG": "warn,access=info,hickory_server::server=off",
                                     "UNSTABLE_ENABLE_SOCKS5": "true"})
    daemon.wait_ready()
    sock, code = socks5_connect(daemon.ports["socks5"], echo_server.port)
    with sock:
        assert code == 0
        sock.sendall(b"x")
        assert sock.recv(10) == b"x"
    wait_for(lambda: "\taccess\tconnection complete" in daemon.log(), 10, "the access line")
    assert "\tinfo\tsupervisor\t" not in daemon.log() and "\tinfo\tnet-worker[0]\t" not in daemon.log()


def test_logging_endpoint_changes_the_filter_of_every_process(start_daemon):
    """POST /logging (§17.1) on the admin port: no parameter reports the filter; `level` appends
    RUST_LOG items; a bad item is refused with the usage text and changes nothing; `reset` goes
    back to RUST_LOG. The change reaches every process through the Supervisor, and a worker
    started afterwards (a NetWorker replaced after kill -9) has it too."""
    daemon = start_daemon(extra_env={"RUST_LOG": "info"})
    daemon.wait_ready()
    admin = daemon.ports["admin"]
    assert http(admin, "/logging", method="POST") == (200, "current log level is info\n")
    status, body = http(admin, "/logging")
    assert status == 405 and "usage:" in body
    status, body = http(admin, "/logging?level=loud", method="POST")
    assert status == 400 and "unknown level" in body and "usage:" in body
    status, body = http(admin, "/logging?level=ztunnel%3A%3Aproxy%3Dfoo", method="POST")
    assert status == 400, body
    assert http(admin, "/logging", method="POST") == (200, "current log level is info\n")

    assert http(admin, "/logging?level=debug", method="POST") == (200, "current log level is info,debug\n")
    wait_for(lambda: daemon.audit_events("log_filter_changed"), 10, "the Supervisor to record the change")
    (event,) = daemon.audit_events("log_filter_changed")
    assert event["filter"] == "info,debug" and event["previous"] == "info" and event["role"] == "net-worker"
    # The CertWorker logs a NetWorker's signer channel at debug; the replacement NetWorker logs
    # each listener it serves at debug: both only with the new filter.
    (old,) = daemon.workers("net-worker")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: "\tdebug\tcert-worker[0]\tsigner channel to net-worker[0] attached" in daemon.log(), 30,
             "the CertWorker's debug line about the replacement's signer channel")
    wait_for(lambda: "\tdebug\tnet-worker[0]\tserving admin" in daemon.log(), 30,
             "the replacement NetWorker's debug line for its admin listener")
    daemon.wait_ready()
    assert http(admin, "/logging", method="POST") == (200, "current log level is info,debug\n")

    assert http(admin, "/logging?reset", method="POST") == (200, "current log level is info\n")
    assert http(admin, "/logging?reset&level=access%3Doff", method="POST") == (200, "current log level is info,access=off\n")


def test_process_descriptor_gauges_count_every_process(start_daemon):
    """§15 process_open_fds / process_max_fds: a NetWorker cannot read /proc, so the Supervisor
    counts the descriptors of itself and every worker and relays them; the gauge is within a few
    of what /proc shows for the same processes, and the limit is RLIMIT_NOFILE as raised."""
    daemon = start_daemon()
    daemon.wait_ready()

    def gauges():
        status, body = http(daemon.ports["stats"], "/metrics")
        values = dict(l.split(" ", 1) for l in body.splitlines() if l.startswith("process_"))
        return (int(values["process_open_fds"]), int(values["process_max_fds"])) if len(values) == 2 else None

    pids = [daemon.proc.pid] + daemon.workers("cert-worker") + daemon.workers("net-worker")
    net_fds = len(os.listdir(f"/proc/{daemon.workers('net-worker')[0]}/fd"))
    assert net_fds > 10  # the NetWorker's own count is not small: leaving it out would show

    def agree():
        # The daemon is idle: its count (every 10 s) and ours (now) agree within a few.
        counted = sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)
        measured = gauges()
        return measured if measured and abs(measured[0] - counted) <= 3 else None

    open_fds, max_fds = wait_for(agree, 30, "the open-descriptor gauge to match /proc")
    with open(f"/proc/{daemon.proc.pid}/limits") as f:
        soft = next(l.split()[3] for l in f if l.startswith("Max open files"))
    assert max_fds == int(soft) and max_fds >= open_fds
