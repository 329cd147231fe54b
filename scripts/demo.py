#!/usr/bin/env python3
"""`make demo`: runs ztunnel in local mode on its built-in defaults and shows what it does.

1. starts the Supervisor (`ztunnel proxy ztunnel`) with examples/local.yaml, waits for readiness;
2. shows the process tree and each worker's confinement from /proc;
3. carries bytes through the SOCKS5 listener to a local echo server, and lists the certificates the
   built-in CA issued (`ztunnel certs`);
4. kills the NetWorker with SIGKILL while a client keeps connecting: no connection is refused;
5. sends SIGTERM and shows the drain and the exit code;
6. prints the audit log.
"""
import os
import signal
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "integration"))
from daemon import EchoServer, http, proc_status, socks5_connect, wait_for  # noqa: E402

READINESS, ADMIN, SOCKS5 = 15021, 15000, 15080


def step(text):
    print(f"\n== {text}", flush=True)


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        pids = [int(p) for p in f.read().split()]
    result = {}
    for child in pids:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            result[child] = os.path.basename(f.read().split(b"\0")[0].decode())
    return result


def ready():
    try:
        return http(READINESS, "/healthz/ready", timeout=2)[0] == 200
    except OSError:
        return False


def main():
    tmp = tempfile.mkdtemp(prefix="ztunnel-demo-")
    audit = os.path.join(tmp, "audit.log")
    env = dict(os.environ, LOCAL_XDS_PATH=os.path.join(ROOT, "examples", "local.yaml"), ZTUNNEL_AUDIT_LOG=audit)
    if not os.path.exists("/proc/net/if_inet6"):
        env["IPV6_ENABLED"] = "false"  # no IPv6 on this host: wildcard listeners bind 0.0.0.0
    step("starting: ztunnel proxy ztunnel (local mode, default ports)")
    daemon = subprocess.Popen([os.path.join(ROOT, ".build", "debug", "ztunnel"), "proxy", "ztunnel"], env=env)
    echo = EchoServer()
    try:
        wait_for(lambda: ready() or daemon.poll() is not None, 60, "readiness")
        if daemon.poll() is not None:
            sys.exit(f"ztunnel exited with {daemon.returncode}")
        print("GET :15021/healthz/ready ->", http(READINESS, "/healthz/ready"))

        step("process tree and confinement (/proc/PID/status)")
        print(f"{daemon.pid} ztunnel (Supervisor) CapEff={proc_status(daemon.pid)['CapEff']}")
        for pid, name in sorted(children(daemon.pid).items()):
            status = proc_status(pid)
            dumpable = "no" if os.stat(f"/proc/{pid}/status").st_uid == 0 else "yes"
            print(f"  {pid} {name}: Uid={status['Uid'].split()[0]} Seccomp={status['Seccomp']} "
                  f"NoNewPrivs={status['NoNewPrivs']} CapEff={status['CapEff']} dumpable={dumpable}")

        step("SOCKS5 on :15080 to a local echo server")
        sock, code = socks5_connect(SOCKS5, echo.port)
        sock.sendall(b"hello through ztunnel")
        print("reply code", code, "echo:", sock.recv(100))
        sock.close()

        step("certificates: the built-in CA issued one for the local config's HBONE workload")
        wait_for(lambda: '"Available"' in http(ADMIN, "/config_dump")[1], 30, "a certificate")
        subprocess.run([os.path.join(ROOT, ".build", "debug", "ztunnel"), "certs"], check=True)

        step("kill -9 the NetWorker while a client connects in a loop")
        (old,) = [p for p, n in children(daemon.pid).items() if n == "ztunnel-net-worker"]
        results, stop = [], threading.Event()

        def client():
            while not stop.is_set():
                try:
                    results.append(http(READINESS, "/healthz/ready", timeout=30)[0])
                except ConnectionRefusedError:
                    results.append("refused")
                except OSError as error:
                    results.append(type(error).__name__)
        thread = threading.Thread(target=client)
        thread.start()
        wait_for(lambda: len(results) > 20, 30, "connections before the kill")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: old not in children(daemon.pid) and ready(), 30, "the replacement")
        count = len(results)
        wait_for(lambda: len(results) > count + 20, 30, "connections after the replacement")
        stop.set()
        thread.join()
        new = [p for p, n in children(daemon.pid).items() if n == "ztunnel-net-worker"]
        print(f"NetWorker {old} -> {new}; {len(results)} connections, refused: {results.count('refused')}, "
              f"answered: {sum(1 for r in results if isinstance(r, int))}")
        dump = http(ADMIN, "/config_dump")[1]
        start = dump.index('"processes"')
        print(dump[start:start + 600].rstrip())

        step("SIGTERM: drain, then exit")
        daemon.send_signal(signal.SIGTERM)
        print("exit code:", daemon.wait(timeout=30))
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        echo.close()
    step(f"audit log ({audit})")
    with open(audit) as f:
        print(f.read(), end="")


if __name__ == "__main__":
    main()
