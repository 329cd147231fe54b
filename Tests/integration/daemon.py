"""Runs the real ztunnel binaries for the integration tests and cleans up after them.

Every daemon gets its own free loopback ports, audit file and temp directory. Readiness is a
check (polling GET /healthz/ready), never a sleep. Teardown kills what the test started, by PID.
"""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("ZTUNNEL_BIN_DIR", os.path.join(ROOT, ".build", "debug"))
ZTUNNEL = os.path.join(BIN, "ztunnel")
LISTENERS = {
    "ZTUNNEL_OUTBOUND_ADDR": "outbound",
    "ZTUNNEL_INBOUND_PLAINTEXT_ADDR": "inbound_plaintext",
    "ZTUNNEL_INBOUND_ADDR": "inbound",
    "ZTUNNEL_SOCKS5_ADDR": "socks5",
    "ZTUNNEL_ADMIN_ADDR": "admin",
    "ZTUNNEL_STATS_ADDR": "stats",
    "ZTUNNEL_READINESS_ADDR": "readiness",
}


def free_ports(count):
    """Ports free on every address (a wildcard bind, dual-stack where the host has IPv6), so a
    daemon may listen on one at [::] as well as on 127.0.0.1."""
    socks, ports = [], []
    v6 = os.path.exists("/proc/net/if_inet6")
    for _ in range(count):
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
        s.bind(("::" if v6 else "0.0.0.0", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_for(predicate, timeout, what):
    """Polls predicate until it returns a truthy value; fails with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def http(port, path, method="GET", timeout=5):
    """One HTTP/1.1 request; returns (status, body) or raises OSError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("empty HTTP response")
    status = int(head.split(b" ")[1])
    return status, body.decode()


class EchoServer:
    """A TCP echo server on loopback, in a thread, for relays to connect to."""

    def __init__(self, host="127.0.0.1", port=0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.accepted = 0  # connections accepted so far
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def close(self):
        self.stopped = True
        self.sock.close()


def socks5_connect(port, dest_port, dest_host="127.0.0.1", timeout=5, source=None):
    """Opens a SOCKS5 CONNECT through the proxy (from `source`, an address of this host, when
    given) to an IPv4 address or, when `dest_host` is not one, to a name (ATYP 3); returns
    (socket, reply code)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None)
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00":
        raise ConnectionError("SOCKS5 greeting refused")
    try:
        address = b"\x01" + socket.inet_aton(dest_host)
    except OSError:
        address = b"\x03" + bytes([len(dest_host)]) + dest_host.encode()
    s.sendall(b"\x05\x01\x00" + address + struct.pack(">H", dest_port))
    reply = b""
    while len(reply) < 10:
        chunk = s.recv(10 - len(reply))
        if not chunk:
            break
        reply += chunk
    return s, (reply[1] if len(reply) >= 2 else None)


class Daemon:
    def __init__(self, extra_env=None, args=("proxy", "ztunnel"), local_config=True, netns=None, hbone_wildcard=False,
                 pod_seccomp=None, etc=None, cwd=None):
        """`local_config`: True for an empty one, a string for its YAML text, False for none.
        `netns`: run the daemon inside that network namespace (entered before exec, so the pid
        is the daemon's). Every daemon runs under the pod's seccomp profile (pod_seccomp.py);
        `pod_seccomp` overrides its mode for this daemon ("kill", "errno", "log", "off").
        `etc`: {name: file} seen by the daemon as /etc/<name> (its own mount namespace).
        `extra_env` values of None remove that variable (a listener address the daemon should
        take from elsewhere). `cwd`: the daemon's working directory (upstream's relative paths).
        `hbone_wildcard`: 15008 listens on every address (workloads on other loopback addresses
        reach it) and outbound tunnels dial its port (ZTUNNEL_HBONE_PORT)."""
        self.tmp = tempfile.mkdtemp(prefix="ztunnel-test-")
        self.audit_path = os.path.join(self.tmp, "audit.log")
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        ports = free_ports(len(LISTENERS))
        self.ports = {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ZTUNNEL_AUDIT_LOG": self.audit_path}
        for (setting, name), port in zip(LISTENERS.items(), ports):
            env[setting] = f"127.0.0.1:{port}"
            self.ports[name] = port
        if hbone_wildcard:
            # [::] where the host has IPv6, as the default (dual-stack: IPv4 peers appear as
            # ::ffff:a.b.c.d), else 0.0.0.0.
            wildcard = "[::]" if os.path.exists("/proc/net/if_inet6") else "0.0.0.0"
            env["ZTUNNEL_INBOUND_ADDR"] = f"{wildcard}:{self.ports['inbound']}"
            env["ZTUNNEL_HBONE_PORT"] = str(self.ports["inbound"])
        if local_config:
            path = os.path.join(self.tmp, "local.yaml")
            with open(path, "w") as f:
                f.write(local_config if isinstance(local_config, str) else "workloads: []\nservices: []\npolicies: []\n")
            env["LOCAL_XDS_PATH"] = path
        env.update(extra_env or {})
        env = {k: v for k, v in env.items() if v is not None}
        self.env = env
        self.stderr = open(self.stderr_path, "wb")
        import pod_seccomp as profile
        preexec = profile.preexec(netns_name=netns, mode=pod_seccomp, etc=etc)
        try:
            self.proc = subprocess.Popen([ZTUNNEL, *args], env=env, stdin=subprocess.DEVNULL, cwd=cwd,
                                         stdout=self.stderr, stderr=self.stderr, preexec_fn=preexec)
        finally:
            if preexec is not None and preexec.netns_fd is not None:
                os.close(preexec.netns_fd)
        self.pid = self.proc.pid

    # -- observation -------------------------------------------------------------------------

    def children(self):
        """{pid: role} of the Supervisor's live child processes, read from /proc."""
        result = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")[0].decode()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            state = stat.rsplit(")", 1)[1].split()[0]
            if ppid == self.pid and state != "Z":
                result[int(entry)] = os.path.basename(cmd)
        return result

    def workers(self, role):
        return sorted(pid for pid, name in self.children().items() if name == f"ztunnel-{role}")

    def ready(self):
        try:
            return http(self.ports["readiness"], "/healthz/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout=60):
        wait_for(lambda: self.ready() or self._exited(), timeout, "readiness")
        assert self.proc.poll() is None, f"daemon exited early:\n{self.log()}"

    def _exited(self):
        return self.proc.poll() is not None

    def config_dump(self):
        return json.loads(http(self.ports["admin"], "/config_dump")[1])

    def audit(self):
        try:
            with open(self.audit_path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def audit_events(self, event):
        return [e for e in self.audit() if e["event"] == event]

    def log(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    # -- control -----------------------------------------------------------------------------

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        """Kills the Supervisor and any worker it left, by PID, and removes its directory (the
        log and audit of a failed test are attached to its report before this runs)."""
        leftovers = list(self.children())
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stderr.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def alive(pid):
    """Whether pid is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def socket_copies(pid):
    """Copies of the socket fds of process `pid` (pidfd_getfd, as root): yields (inode, socket),
    each copy closed once the caller moves on."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(434, pid, 0)  # pidfd_open
    assert pidfd >= 0, os.strerror(ctypes.get_errno())
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            copy = libc.syscall(438, pidfd, int(fd), 0)  # pidfd_getfd
            assert copy >= 0, os.strerror(ctypes.get_errno())
            with socket.socket(fileno=copy) as s:
                yield int(target[8:-1]), s
    finally:
        os.close(pidfd)
