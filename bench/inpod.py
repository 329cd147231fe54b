#!/usr/bin/env python3
"""In-pod mode figures (issue #9), on release binaries, one node of network-namespace pods with
istio-cni's in-pod rules (Tests/integration/mesh_box.py) and a stand-in for istio-cni
(cni_double.py). Prints figures, asserts nothing:

  - AddWorkload to its ack (the pod's listeners made in its namespace by the Supervisor), and
    AddWorkload to the pod's first connection carried (its 15001 served by a NetWorker);
  - one outbound connection through the pod's 15001 to another pod's echo over HBONE (connect,
    8 bytes there and back), median and p90 of INPOD_CONNECTIONS, with the NetWorker's pool of
    sockets made in the pod's namespace (8) and without (one asked of the Supervisor per
    connection), and the same exchange with no capture (a marked socket, direct);
  - memory (PSS) of the Supervisor and the NetWorker with 2 pods and with INPOD_PODS more,
    per pod;
  - the pods' DNS proxy (UDP to the pod's 127.0.0.1:15053, timed inside the pod): a mesh name
    answered from the model, and a name forwarded over UDP to a stub nameserver (the same query
    sent straight to the stub over UDP from the node is the baseline), median and p99 of
    INPOD_DNS_QUERIES.

  make bench-inpod          (INPOD_PODS=20, INPOD_CONNECTIONS=300, INPOD_DNS_QUERIES=1000)
"""
import os
import socket
import statistics
import struct
import sys
import tempfile
import textwrap
import time

from common import pss_kib  # noqa: E402 (sets the path and the release binaries first)
from cni_double import CniDouble  # noqa: E402
from daemon import Daemon, http, wait_for  # noqa: E402
from dns_stub import DnsStub  # noqa: E402
from mesh_box import MeshBox  # noqa: E402
from test_inpod_dns import SERVICES  # noqa: E402 (the echo service the DNS test asks for)

PODS = int(os.environ.get("INPOD_PODS", "20"))
CONNECTIONS = int(os.environ.get("INPOD_CONNECTIONS", "300"))
DNS_QUERIES = int(os.environ.get("INPOD_DNS_QUERIES", "1000"))
MARK = 0x539
STUB = "127.0.0.77"

# Run inside a pod: COUNT queries for NAME to 127.0.0.1:15053 over UDP, one at a time; prints
# the median and p99 in microseconds.
_DNS_TIMER = textwrap.dedent("""
    import socket, struct, sys, time
    name, count = sys.argv[1], int(sys.argv[2])
    question = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\0\\0\\1\\0\\1"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    times = []
    for i in range(count):
        query = struct.pack("!HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0) + question
        start = time.perf_counter()
        s.sendto(query, ("127.0.0.1", 15053))
        while struct.unpack("!H", s.recv(4096)[:2])[0] != i & 0xffff:
            pass
        times.append(time.perf_counter() - start)
    times.sort()
    print(times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6)
""")


def dns_series(pod, name, count):
    median, p99 = pod.run("python3", "-c", _DNS_TIMER, name, str(count), timeout=600).stdout.split()
    return float(median), float(p99)


def stub_series(name, count):
    """The same query straight to the stub over UDP from the node (as the proxy forwards it)."""
    question = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0\0\1\0\1"
    times = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for i in range(count):
            query = struct.pack("!HHHHHH", i, 0x0100, 1, 0, 0, 0) + question
            start = time.perf_counter()
            s.sendto(query, (STUB, 53))
            while struct.unpack("!H", s.recv(4096)[:2])[0] != i:
                pass
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


def ready(daemon):
    try:
        return http(daemon.ports["readiness"], "/healthz/ready", timeout=2)[0] == 200
    except OSError:
        return False


def exchange(pod, host, port, mark=None):
    """Seconds for connect + 8 bytes echoed, from `pod`."""
    start = time.perf_counter()
    with pod.connect(host, port, timeout=10, mark=mark) as s:
        s.sendall(b"ping1234")
        got = b""
        while len(got) < 8:
            chunk = s.recv(64)
            if not chunk:
                raise RuntimeError(f"closed after {len(got)} bytes")
            got += chunk
    return time.perf_counter() - start


def series(pod, host, port, mark=None):
    times = sorted(exchange(pod, host, port, mark) for _ in range(CONNECTIONS))
    return statistics.median(times) * 1e6, times[int(len(times) * 0.9)] * 1e6


def memory(daemon):
    supervisor = daemon.proc.pid
    nets = daemon.workers("net-worker")
    return pss_kib(supervisor), sum(pss_kib(p) for p in nets)


def run(pool):
    box = MeshBox(pods=PODS + 2)
    cni = CniDouble()
    cni.start()
    stub = DnsStub(STUB, {"example.org": "192.0.2.7"}, tcp=True)
    resolv = tempfile.NamedTemporaryFile("w", prefix="bench-resolv-", delete=False)
    resolv.write(f"nameserver {STUB}\n")
    resolv.close()
    daemon = None
    try:
        a, b = box.pods[0], box.pods[1]
        echo = b.echo_server(8080)
        daemon = Daemon(local_config=box.local_config(SERVICES), etc={"resolv.conf": resolv.name}, pod_seccomp="errno",
                        extra_env={"INPOD_UDS": cni.path, "NODE_NAME": box.node, "UNSTABLE_ENABLE_SOCKS5": "false",
                                   "RUST_LOG": "warn", "ZTUNNEL_POD_SOCKET_POOL": str(pool)})
        wait_for(lambda: cni.connected, 60, "the ZDS connection")
        for pod in (a, b):
            assert cni.add(**pod.info()) == ""
        assert cni.snapshot_sent() == ""
        wait_for(lambda: ready(daemon), 60, "readiness")
        wait_for(lambda: all(c["state"] == "Available" for c in daemon.config_dump()["certificates"]), 60, "certificates")
        exchange(a, b.ip, 8080)  # warm: the pooled HBONE connection, the certificates
        before = memory(daemon)
        figures = {"pool": pool}
        figures["captured"] = series(a, b.ip, 8080)
        if pool:
            figures["direct"] = series(a, b.ip, 8080, mark=MARK)
            figures["dns_local"] = dns_series(a, "echo.shop.svc.cluster.local", DNS_QUERIES)
            figures["dns_forwarded"] = dns_series(a, "example.org", max(DNS_QUERIES // 5, 10))
            figures["dns_stub"] = stub_series("example.org", max(DNS_QUERIES // 5, 10))
            acks, served = [], []
            for pod in box.pods[2:]:
                start = time.perf_counter()
                assert cni.add(**pod.info()) == ""
                acks.append(time.perf_counter() - start)
                wait_for(lambda: _try(pod, b), 30, f"{pod.name}'s first connection")
                served.append(time.perf_counter() - start)
            after = memory(daemon)
            figures["ack"] = (statistics.median(acks) * 1e3, max(acks) * 1e3)
            figures["served"] = (statistics.median(served) * 1e3, max(served) * 1e3)
            figures["memory"] = (before, after)
        box.stop(echo.pid)
        return figures
    finally:
        if daemon:
            daemon.stop()
        cni.stop()
        stub.close()
        os.unlink(resolv.name)
        box.cleanup()


def _try(pod, target):
    try:
        exchange(pod, target.ip, 8080)
        return True
    except (OSError, RuntimeError):
        return False


def main():
    if os.geteuid() != 0:
        sys.exit("bench/inpod.py needs root (network namespaces, iptables)")
    pooled = run(8)
    unpooled = run(0)
    print(f"in-pod mode, release build, {PODS} pods added after 2, {CONNECTIONS} connections per series")
    print(f"AddWorkload to ack (listeners made in the pod):   median {pooled['ack'][0]:.1f} ms, max {pooled['ack'][1]:.1f} ms")
    print(f"AddWorkload to the pod's first connection carried: median {pooled['served'][0]:.1f} ms, max {pooled['served'][1]:.1f} ms")
    d50, d90 = pooled["direct"]
    p50, p90 = pooled["captured"]
    u50, u90 = unpooled["captured"]
    print(f"connect + 8-byte echo, pod a -> pod b:  direct (not captured) p50 {d50:.0f} us p90 {d90:.0f} us")
    print(f"  through 15001 over HBONE, socket pool of 8:        p50 {p50:.0f} us p90 {p90:.0f} us")
    print(f"  through 15001 over HBONE, one socket asked per connection: p50 {u50:.0f} us p90 {u90:.0f} us"
          f"  (the Supervisor round trip: {u50 - p50:+.0f} us at p50)")
    l50, l99 = pooled["dns_local"]
    f50, f99 = pooled["dns_forwarded"]
    t50, t99 = pooled["dns_stub"]
    print(f"DNS over UDP from a pod to its 15053: a mesh name answered here p50 {l50:.0f} us p99 {l99:.0f} us "
          f"({DNS_QUERIES} queries)")
    print(f"  a name forwarded over UDP to the stub p50 {f50:.0f} us p99 {f99:.0f} us; the stub over UDP straight "
          f"from the node p50 {t50:.0f} us p99 {t99:.0f} us ({f50 / t50:.2f}x)")
    (s0, n0), (s1, n1) = pooled["memory"]
    print(f"memory (PSS): Supervisor {s0} -> {s1} KiB, NetWorker {n0} -> {n1} KiB with {PODS} more pods: "
          f"{(s1 - s0 + n1 - n0) / PODS:.0f} KiB per pod")


if __name__ == "__main__":
    main()
