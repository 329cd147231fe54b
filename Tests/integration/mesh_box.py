"""One node with pods, made of network namespaces, for the in-pod (istio-cni) tests.

    zt-br-<id>   a namespace holding the Linux bridge br0 (the node's pod network)
    zt-pa-<id>   pod a: eth0 (veth to the bridge) 10.250.0.2/24, lo up, istio-cni's in-pod rules
    zt-pb-<id>   pod b: 10.250.0.3/24, ...

Every interface lives in one of these namespaces (the veths are created in the bridge namespace
with their pod end moved straight into the pod), so nothing touches the root namespace and
deleting the namespaces by name removes everything. Pod namespaces are /run/netns/<name> (`ip
netns add`), which is what the CNI double opens for AddWorkload. The daemon runs in the root
namespace and reaches the pods only through the netns fds it is handed.

The in-pod rules are those of ISTIO_COMPAT §2.1 and no more (no DNS capture, no TPROXY, no probe
SNAT):
    nat OUTPUT:     TCP, not to 127.0.0.1, not marked 0x539/0xfff       -> REDIRECT 15001
    nat PREROUTING: TCP, not to 127.0.0.1, dport != 15008, not from lo,
                    not marked 0x539/0xfff                               -> REDIRECT 15006
    mangle PREROUTING: marked 0x539/0xfff -> CONNMARK 0x111/0xfff; mangle OUTPUT: connmark
                    0x111/0xfff -> restore the mark; fwmark 0x111/0xfff -> table 100 (local
                    0.0.0.0/0 dev lo): the return path of a connection ztunnel made to an
                    application from the client's address (original source)
Processes started here are stopped by PID; namespaces are deleted by name. Never pkill.
"""
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest

from netns import in_netns  # noqa: F401 (tests import it from here too)

MARK = 0x539
SUBNET = "10.250.0"
OUTBOUND, INBOUND_PLAINTEXT, INBOUND_HBONE = 15001, 15006, 15008
_iptables = None


def _run(*args, check=True, timeout=30):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout)


def iptables():
    """The iptables binary that can program nat REDIRECT with mark matches in a fresh namespace
    here (nft first, then legacy); pytest.skip with the reason if none can, or if `ip` is missing."""
    global _iptables
    if _iptables is not None:
        if isinstance(_iptables, str) and _iptables.startswith("skip:"):
            pytest.skip(_iptables[5:])
        return _iptables
    if os.geteuid() != 0:
        _iptables = "skip:the mesh box needs root (network namespaces, iptables)"
        return iptables()
    if not shutil.which("ip"):
        _iptables = "skip:the mesh box needs `ip` (iproute2)"
        return iptables()
    probe = f"zt-probe-{secrets.token_hex(3)}"
    reasons = []
    try:
        made = _run("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            _iptables = f"skip:cannot create a network namespace: {made.stderr.strip()}"
            return iptables()
        bridge = _run("ip", "-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        veth = _run("ip", "-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1", check=False)
        if bridge.returncode or veth.returncode:
            _iptables = f"skip:no bridge/veth support: {(bridge.stderr + veth.stderr).strip()}"
            return iptables()
        for candidate in ("iptables", "iptables-nft", "iptables-legacy"):
            path = shutil.which(candidate)
            if not path:
                continue
            rule = _run("ip", "netns", "exec", probe, path, "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
                        "-m", "mark", "!", "--mark", "0x539/0xfff", "-j", "REDIRECT", "--to-ports", "15001",
                        check=False)
            if rule.returncode == 0:
                _iptables = path
                return path
            reasons.append(f"{candidate}: {rule.stderr.strip()}")
        _iptables = "skip:no iptables that can REDIRECT in a namespace here: " + ("; ".join(reasons) or "none installed")
        return iptables()
    finally:
        _run("ip", "netns", "del", probe, check=False)


def require_tools():
    """Skips the calling test, with the reason, when the mesh box cannot be built here."""
    iptables()


# A small server run with `ip netns exec <pod> python3 -c`: prints "ready <port>" once listening.
# mode "echo" echoes each connection; mode "hold" only holds the port (never accepts); mode "peer"
# writes each connection's client address ("ip port\n") and closes it.
_SERVER = textwrap.dedent("""
    import socket, sys, threading
    port, mode, reuseport = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    try:
        s = socket.socket(socket.AF_INET6)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        host = "::"
    except OSError:
        s = socket.socket(socket.AF_INET)
        host = "0.0.0.0"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1 if reuseport else 0)
    s.bind((host, port))
    s.listen(128)
    print("ready", s.getsockname()[1], flush=True)
    if mode == "hold":
        threading.Event().wait()
    def echo(c):
        with c:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d)
    while True:
        c, peer = s.accept()
        if mode == "peer":
            with c:
                ip = peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
                c.sendall(f"{ip} {peer[1]}\\n".encode())
            continue
        threading.Thread(target=echo, args=(c,), daemon=True).start()
""")


class Pod:
    def __init__(self, box, key, index):
        self.box = box
        self.key = key  # "a", "b", ...
        self.netns = f"zt-p{key}-{box.id}"
        self.netns_path = f"/run/netns/{self.netns}"
        self.ip = f"{SUBNET}.{index + 2}"
        # Kubernetes-side identity, for the local xDS config and the CNI's WorkloadInfo.
        self.name = f"pod-{key}"
        self.namespace = box.namespace
        self.service_account = f"sa-{key}"
        self.uid = str(uuid.uuid4())  # a Kubernetes pod UID (metadata.uid)
        self.xds_uid = f"Kubernetes//Pod/{self.namespace}/{self.name}"
        self.identity = f"spiffe://cluster.local/ns/{self.namespace}/sa/{self.service_account}"

    def info(self):
        """Keyword arguments for CniDouble.add."""
        return {"uid": self.uid, "netns_path": self.netns_path, "name": self.name,
                "namespace": self.namespace, "service_account": self.service_account}

    # -- commands ---------------------------------------------------------------------------

    def run(self, *args, check=True, timeout=30):
        """Runs a command inside the pod namespace; returns the CompletedProcess (text)."""
        return _run("ip", "netns", "exec", self.netns, *args, check=check, timeout=timeout)

    def spawn(self, *args, **popen):
        """Starts a process inside the pod namespace (`ip netns exec` execs it: same PID);
        the box stops it at cleanup if the test has not."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *args], stdin=subprocess.DEVNULL, **popen)
        self.box.processes[proc.pid] = proc
        return proc

    def _server(self, port, mode, reuseport, timeout=10):
        proc = self.spawn(sys.executable, "-u", "-c", _SERVER, str(port), mode, "1" if reuseport else "0",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("ready"):
            self.box.stop(proc.pid)
            raise AssertionError(f"server on {self.netns}:{port} did not start: {line!r} {proc.stderr.read()}")
        proc.port = int(line.split()[1])
        return proc

    def echo_server(self, port, reuseport=False):
        """A TCP echo server on the pod's wildcard address (dual-stack); returns its Popen (.pid,
        .port). Stop it with box.stop(proc.pid)."""
        return self._server(port, "echo", reuseport)

    def peer_server(self, port):
        """A server on the pod's wildcard address that answers each connection with the client
        address it sees ("ip port\n"); returns its Popen."""
        return self._server(port, "peer", False)

    def hold_port(self, port, reuseport=False):
        """A process that listens on the wildcard `port` (dual-stack, SO_REUSEPORT off by default)
        and never accepts: nothing else can bind that port in the pod. Returns its Popen."""
        return self._server(port, "hold", reuseport)

    # -- sockets from this test process -----------------------------------------------------

    def socket(self, family=socket.AF_INET, mark=None):
        """A TCP socket made inside the pod namespace (it keeps it); SO_MARK `mark` if given."""
        def make():
            s = socket.socket(family, socket.SOCK_STREAM)
            if mark is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            return s
        return in_netns(self.netns_path, make)

    def connect(self, host, port, timeout=10, mark=None):
        s = self.socket(mark=mark)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
        return s

    def round_trip(self, host, port, payload, timeout=10, mark=None):
        """Connects from the pod, sends payload, half-closes, returns every byte received."""
        with self.connect(host, port, timeout=timeout, mark=mark) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            received = bytearray()
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return bytes(received)
                received += chunk

    def listen(self, port, host="0.0.0.0"):
        """A listening socket of this test process inside the pod (for capture checks)."""
        def make():
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(16)
            return s
        return in_netns(self.netns_path, make)

    # -- observation ------------------------------------------------------------------------

    def listeners(self):
        """{port: {socket inode, ...}} of the TCP sockets listening in the pod namespace, from
        its /proc/net/tcp and tcp6."""
        def read():
            result = {}
            for name in ("tcp", "tcp6"):
                try:
                    with open(f"/proc/thread-self/net/{name}") as f:
                        lines = f.read().splitlines()[1:]
                except FileNotFoundError:
                    continue
                for line in lines:
                    fields = line.split()
                    if fields[3] != "0A":  # TCP_LISTEN
                        continue
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    result.setdefault(port, set()).add(int(fields[9]))
            return result
        return in_netns(self.netns_path, read)

    def nat_rules(self):
        return self.run(self.box.iptables, "-t", "nat", "-S").stdout


class MeshBox:
    def __init__(self, pods=2, redirect=True, namespace="mesh", node="node-a"):
        """`pods`: how many (keys a, b, c, ...); `redirect`: program istio-cni's in-pod rules."""
        self.iptables = iptables()  # skips the test when the box cannot be built
        self.id = secrets.token_hex(3)
        self.namespace = namespace
        self.node = node
        self.bridge = f"zt-br-{self.id}"
        self.pods = [Pod(self, "abcdefghijklmnopqrstuvwxyz"[i], i) for i in range(pods)]
        self.processes = {}
        self._made = []
        try:
            self._make(redirect)
        except BaseException:
            self.cleanup()
            raise

    def pod(self, key):
        return next(p for p in self.pods if p.key == key)

    def _netns(self, name):
        _run("ip", "netns", "add", name)
        self._made.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _make(self, redirect):
        self._netns(self.bridge)
        _run("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        _run("ip", "-n", self.bridge, "link", "set", "br0", "up")
        for pod in self.pods:
            self._netns(pod.netns)
            port = f"v-{pod.key}"
            _run("ip", "-n", self.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                 "netns", pod.netns)
            _run("ip", "-n", self.bridge, "link", "set", port, "master", "br0")
            _run("ip", "-n", self.bridge, "link", "set", port, "up")
            _run("ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
            _run("ip", "-n", pod.netns, "link", "set", "eth0", "up")
            if redirect:
                self.redirect(pod)

    def redirect(self, pod):
        """Programs istio-cni's in-pod rules (§2.1) in the pod's namespace."""
        mark = ["-m", "mark", "!", "--mark", f"{MARK:#x}/0xfff"]
        pod.run(self.iptables, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "!", "-d", "127.0.0.1/32", *mark,
                "-j", "REDIRECT", "--to-ports", str(OUTBOUND))
        pod.run(self.iptables, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "!", "-d", "127.0.0.1/32",
                "!", "--dport", str(INBOUND_HBONE), "!", "-i", "lo", *mark,
                "-j", "REDIRECT", "--to-ports", str(INBOUND_PLAINTEXT))
        pod.run(self.iptables, "-t", "mangle", "-A", "PREROUTING", "-m", "mark", "--mark", f"{MARK:#x}/0xfff",
                "-j", "CONNMARK", "--set-xmark", "0x111/0xfff")
        pod.run(self.iptables, "-t", "mangle", "-A", "OUTPUT", "-m", "connmark", "--mark", "0x111/0xfff",
                "-j", "CONNMARK", "--restore-mark", "--nfmask", "0xffffffff", "--ctmask", "0xffffffff")
        pod.run("ip", "rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
        pod.run("ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")

    def unredirect(self, pod):
        pod.run(self.iptables, "-t", "nat", "-F", "OUTPUT")
        pod.run(self.iptables, "-t", "nat", "-F", "PREROUTING")
        pod.run(self.iptables, "-t", "mangle", "-F", "OUTPUT")
        pod.run(self.iptables, "-t", "mangle", "-F", "PREROUTING")
        pod.run("ip", "rule", "del", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100", check=False)
        pod.run("ip", "route", "del", "local", "0.0.0.0/0", "dev", "lo", "table", "100", check=False)

    def workload_yaml(self, pod, node=None):
        """The lines of one pod as an HBONE workload of the local config (xDS uid
        Kubernetes//Pod/<ns>/<name>; the ZDS uid is the pod's own, a Kubernetes pod UID)."""
        return [f"- uid: {pod.xds_uid}",
                f"  name: {pod.name}",
                f"  namespace: {pod.namespace}",
                f"  serviceAccount: {pod.service_account}",
                "  trustDomain: cluster.local",
                f'  workloadIps: ["{pod.ip}"]',
                "  protocol: HBONE",
                f"  node: {node or self.node}"]

    def local_config(self, extra=""):
        """LOCAL_XDS_PATH YAML with every pod as an HBONE workload on this node."""
        lines = ["workloads:"]
        for pod in self.pods:
            lines += self.workload_yaml(pod)
        return "\n".join(lines) + "\n" + extra

    def stop(self, pid):
        """Stops a process this box started, by PID (SIGKILL, then reaps it)."""
        proc = self.processes.pop(pid, None)
        if proc is None:
            raise ValueError(f"{pid} was not started by this mesh box")
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()

    def cleanup(self):
        for pid in list(self.processes):
            try:
                self.stop(pid)
            except Exception:  # keep cleaning
                pass
        for name in reversed(self._made):
            _run("ip", "netns", "del", name, check=False)
        self._made.clear()
