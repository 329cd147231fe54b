#!/usr/bin/env python3
"""`make demo`: runs ztunnel in local mode on its built-in defaults and shows what it does.

1. starts the Supervisor (`ztunnel proxy ztunnel`) with examples/local.yaml, waits for readiness;
2. shows the process tree and each worker's confinement from /proc;
3. lists the certificates the built-in CA issued (`ztunnel certs`), then runs two applications
   from the config on loopback addresses: `sleep` (127.0.0.3) calls the echo service's VIP through
   SOCKS5, ztunnel tunnels it over HBONE (sleep's certificate, a pooled mTLS HTTP/2 connection)
   into its own 15008 (echo's certificate), authorizes it and reaches echo (127.0.0.2:9080); both
   sides' access-log lines show both identities. `curl`, whom echo's policy does not admit, is
   refused with 401 on 15008;
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
ECHO_VIP, ECHO_ADDRESS, ECHO_PORT = "10.96.0.20", "127.0.0.2", 9080
SLEEP_ADDRESS, CURL_ADDRESS = "127.0.0.3", "127.0.0.4"


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
    log_path = os.path.join(tmp, "ztunnel.log")
    log_file = open(log_path, "wb")
    print(f"(the daemon's log: {log_path})")
    daemon = subprocess.Popen([os.path.join(ROOT, ".build", "debug", "ztunnel"), "proxy", "ztunnel"], env=env,
                              stdout=log_file, stderr=log_file)
    echo = EchoServer(host=ECHO_ADDRESS, port=ECHO_PORT)

    def log_lines(needle):
        with open(log_path, errors="replace") as f:
            return [line.rstrip("\n") for line in f if needle in line]
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

        step("certificates: the built-in CA issued one for each HBONE workload of the local config")
        wait_for(lambda: http(ADMIN, "/config_dump")[1].count('"Available"') >= 3, 30, "three certificates")
        subprocess.run([os.path.join(ROOT, ".build", "debug", "ztunnel"), "certs"], check=True)

        step(f"two applications over HBONE: sleep ({SLEEP_ADDRESS}) -> SOCKS5 :15080 -> {ECHO_VIP}:80 (echo service)")
        sock, code = socks5_connect(SOCKS5, 80, ECHO_VIP, source=SLEEP_ADDRESS)
        sock.sendall(b"hello from sleep, over HBONE")
        print("SOCKS5 reply code", code, "| echo answered:", sock.recv(100))
        sock.close()
        wait_for(lambda: len(log_lines("connection complete")) >= 2, 10, "both access-log lines")
        for line in log_lines("connection complete"):
            fields = dict(f.split("=", 1) for f in line.split("\t")[-1].split(" ") if "=" in f)
            print(f"  {fields.get('direction'):8} src.identity={fields.get('src.identity')} "
                  f"dst.identity={fields.get('dst.identity')} dst.addr={fields.get('dst.addr')} "
                  f"dst.hbone_addr={fields.get('dst.hbone_addr')} bytes_sent={fields.get('bytes_sent')}")

        step("curl (127.0.0.4), also in the mesh: echo's policy admits only sleep's identity")
        sock, code = socks5_connect(SOCKS5, 80, ECHO_VIP, source=CURL_ADDRESS)
        sock.close()
        wait_for(lambda: log_lines("HBONE request refused"), 10, "the refusal on 15008")
        print("SOCKS5 reply code", code, "| 15008:", log_lines("HBONE request refused")[-1].split("\t", 3)[-1])

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
        log_file.close()
    step(f"audit log ({audit})")
    with open(audit) as f:
        print(f.read(), end="")


if __name__ == "__main__":
    main()
