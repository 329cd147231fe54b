"""The pods' DNS proxy on 15053 (ISTIO_COMPAT §13), in in-pod mode: istio-cni's DNS capture
(port 53, UDP and TCP, redirected to 15053 in the pod) is added to pod a's rules here. Mesh
service names are answered from the mesh model (A, authoritative, TTL 30, short names expanded
from the pod's namespace); anything else goes, as it came, to ztunnel's own nameserver over TCP
(a stub on 127.0.0.77:53 named by the daemon's resolv.conf); bad datagrams are dropped or
refused and the proxy keeps serving. The proxy also listens on [::1]:15053 where the pod's
loopback has IPv6. The counters of §15.1 count what was answered and forwarded. Namespaces and
the istio-cni double as in test_inpod.py."""
import os
import random
import struct
import subprocess
import textwrap

from daemon import http, wait_for
from dns_stub import DnsStub
from mesh_box import MARK
from test_inpod import box, cni, enrol, start, wait_ready  # noqa: F401 (fixtures)

SERVICES = textwrap.dedent("""\
    services:
    - name: echo
      namespace: shop
      hostname: echo.shop.svc.cluster.local
      vips: ["/10.96.0.42"]
      ports:
        80: 8080
    """)

# Run inside the pod: sends each (transport, payload hex) to 10.250.0.253:53, which the capture
# rules redirect to the proxy (the pod has no route to a cluster DNS address; any routable
# address is redirected the same way), and prints each answer's hex, or "none" after 3 s.
_CLIENT = textwrap.dedent("""
    import socket, struct, sys
    for item in sys.argv[1:]:
        transport, payload = item.split(":", 1)
        payload = bytes.fromhex(payload) if transport != "pipelined" else payload.encode()
        try:
            if transport == "udp":
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(3)
                s.sendto(payload, ("10.250.0.253", 53))
                answer = s.recv(65535)
            elif transport == "udp6":  # straight to [::1]:15053, where IPv6 capture sends it
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s.settimeout(3)
                s.sendto(payload, ("::1", 15053))
                answer = s.recv(65535)
            elif transport == "pipelined":
                # Every query of the payload (hex, ","-separated) on one connection at once, then
                # our side closed; prints the answers, then "eof" if the proxy closed its side.
                s = socket.create_connection(("10.250.0.253", 53), timeout=3)
                queries = [bytes.fromhex(q) for q in payload.decode().split(",")]
                s.sendall(b"".join(struct.pack("!H", len(q)) + q for q in queries))
                s.shutdown(socket.SHUT_WR)
                data = b""
                while True:
                    chunk = s.recv(65535)
                    if not chunk:
                        break
                    data += chunk
                answers, offset = [], 0
                while offset + 2 <= len(data):
                    length = struct.unpack("!H", data[offset:offset + 2])[0]
                    answers.append(data[offset + 2:offset + 2 + length].hex())
                    offset += 2 + length
                print(",".join(answers) + ",eof")
                s.close()
                continue
            else:
                s = socket.create_connection(("10.250.0.253", 53), timeout=3)
                s.sendall(struct.pack("!H", len(payload)) + payload)
                head = s.recv(2)
                length = struct.unpack("!H", head)[0]
                answer = b""
                while len(answer) < length:
                    chunk = s.recv(length - len(answer))
                    if not chunk:
                        break
                    answer += chunk
            print(answer.hex())
        except OSError:
            print("none")
        s.close()
""")


def query(name, qtype=1, ident=None):
    ident = random.randrange(65536) if ident is None else ident
    question = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack("!HH", qtype, 1)
    return ident, struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question


def parse(answer):
    """(id, flags, [(type, ttl, rdata)]) of an answer whose records' owners are pointers or names."""
    ident, flags, qd, an = struct.unpack("!HHHH", answer[:8])
    offset = 12
    for _ in range(qd):
        offset = _skip_name(answer, offset) + 4
    records = []
    for _ in range(an):
        offset = _skip_name(answer, offset)
        rtype, _cls, ttl, length = struct.unpack("!HHIH", answer[offset:offset + 10])
        offset += 10
        records.append((rtype, ttl, answer[offset:offset + length]))
        offset += length
    return ident, flags, records


def _skip_name(data, offset):
    while data[offset] != 0:
        if data[offset] & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + data[offset]
    return offset + 1


def ask(pod, *items):
    out = pod.run("python3", "-c", _CLIENT, *[f"{t}:{p.hex()}" for t, p in items], timeout=30).stdout.split()
    return [None if o == "none" else bytes.fromhex(o) for o in out]


def ask_pipelined(pod, *queries):
    """The answers to `queries` sent at once on one TCP connection then half-closed, and whether
    the proxy then closed its side (a read ended with EOF rather than the client's 3 s timeout)."""
    out = pod.run("python3", "-c", _CLIENT, "pipelined:" + ",".join(q.hex() for q in queries), timeout=30).stdout.strip()
    if out == "none":
        return [], False
    parts = out.split(",")
    return [bytes.fromhex(p) for p in parts[:-1]], parts[-1] == "eof"


def capture_dns(box, pod):
    """istio-cni's DNS capture rules (§2.1), ahead of the TCP rule to 15001."""
    mark = ["-m", "mark", "!", "--mark", f"{MARK:#x}/0xfff"]
    for proto in ("udp", "tcp"):
        pod.run(box.iptables, "-t", "nat", "-I", "OUTPUT", "1", "-p", proto, "--dport", "53", *mark,
                "-j", "REDIRECT", "--to-ports", "15053")


def start_serving_dns(start_daemon, box, cni, pod, services, resolv, **env):
    """A daemon in in-pod mode with `services` and `resolv` as its /etc/resolv.conf, `pod`
    enrolled and its DNS proxy listening."""
    daemon = start_daemon(local_config=box.local_config(services), etc={"resolv.conf": str(resolv)}, extra_env={
        "INPOD_UDS": cni.path, "NODE_NAME": box.node, "UNSTABLE_ENABLE_SOCKS5": "false", **env})
    wait_for(lambda: cni.connected or daemon.proc.poll() is not None, 60, "the daemon's ZDS connection")
    enrol(cni, [pod])
    wait_ready(daemon)
    wait_for(lambda: 15053 in pod.listeners(), 10, "the DNS proxy's TCP listener in the pod")
    return daemon


def test_the_pods_dns_is_answered_for_mesh_services_and_forwarded_for_the_rest(box, cni, start_daemon, tmp_path):
    a = box.pod("a")
    capture_dns(box, a)
    stub = DnsStub("127.0.0.77", {"example.org": "192.0.2.7", "big.example": "192.0.2.8"}, tcp=True,
                   truncate_udp=["big.example"])
    resolv = tmp_path / "resolv.conf"
    # The first nameserver refuses (nothing listens there): forwarding goes on to the next.
    resolv.write_text("nameserver 127.0.0.78\nnameserver 127.0.0.77\n")
    try:
        daemon = start_serving_dns(start_daemon, box, cni, a, SERVICES, resolv)

        full_id, full = query("echo.shop.svc.cluster.local")
        short_id, short = query("echo.shop")
        v6_id, v6 = query("echo.shop.svc.cluster.local", qtype=28)
        ext_id, ext = query("example.org")
        tcp_id, tcp = query("echo.shop.svc.cluster.local")
        six_id, six = query("echo.shop.svc.cluster.local")
        answers = ask(a, ("udp", full), ("udp", short), ("udp", v6), ("udp", ext), ("tcp", tcp), ("udp6", six))
        assert None not in answers, answers
        for (ident, answer) in zip((full_id, short_id, tcp_id, six_id), (answers[0], answers[1], answers[4], answers[5])):
            got_id, flags, records = parse(answer)
            assert got_id == ident and flags & 0x8000 and flags & 0x0400 and flags & 0xF == 0, hex(flags)  # QR, AA, NOERROR
            assert records == [(1, 30, bytes([10, 96, 0, 42]))], records
        # The service has no IPv6 VIP: an empty NOERROR, not NXDOMAIN.
        got_id, flags, records = parse(answers[2])
        assert got_id == v6_id and flags & 0xF == 0 and records == [], (hex(flags), records)
        # Not a mesh name: forwarded over UDP to ztunnel's nameserver (through the socket the
        # Supervisor connected to it), its answer returned under the client's id.
        got_id, flags, records = parse(answers[3])
        assert got_id == ext_id and records == [(1, 30, bytes([192, 0, 2, 7]))], records
        assert ("example.org", 1) in stub.queries and ("example.org", 1) not in stub.tcp_queries
        assert not [q for q in stub.queries if q[0].startswith("echo")]
        # An answer the nameserver truncated over UDP is fetched again over TCP.
        big_id, big = query("big.example")
        (answer,) = ask(a, ("udp", big))
        assert answer is not None and parse(answer)[0] == big_id
        assert parse(answer)[2] == [(1, 30, bytes([192, 0, 2, 8]))] and not answer[2] & 0x02
        assert ("big.example", 1) in stub.tcp_queries

        # Bad datagrams: no header (dropped), a response (dropped), two questions (FORMERR); the
        # proxy then still answers.
        bad_id, two = query("echo.shop")
        two = two[:4] + struct.pack("!H", 2) + two[6:]
        after_id, after = query("echo.shop.svc.cluster.local")
        answers = ask(a, ("udp", b"\x01\x02"), ("udp", b"\x00\x01\x81\x80" + bytes(8)), ("udp", two), ("udp", after))
        assert answers[0] is None and answers[1] is None, answers
        got_id, flags, _ = parse(answers[2])
        assert got_id == bad_id and flags & 0xF == 1, hex(flags)  # FORMERR
        assert parse(answers[3])[2] == [(1, 30, bytes([10, 96, 0, 42]))]

        # Several queries on one TCP connection, the client's side then closed: each answered, in
        # order, and the proxy closes its side (no connection left behind half-open).
        ids_and_queries = [query("echo.shop.svc.cluster.local"), query("example.org"), query("echo")]
        answers, closed = ask_pipelined(a, *[q for _, q in ids_and_queries])
        assert [parse(x)[0] for x in answers] == [i for i, _ in ids_and_queries], answers
        assert parse(answers[0])[2] == [(1, 30, bytes([10, 96, 0, 42]))]
        assert parse(answers[1])[2] == [(1, 30, bytes([192, 0, 2, 7]))]
        assert parse(answers[2])[1] & 0x8000, "a one-label name outside the pod's namespace: an answer all the same"
        assert closed, "the proxy kept the half-closed connection open"

        # The counters of §15.1: local answers and forwards by type and protocol, from pod a
        # (no canonical labels in the local config: "unknown").
        def dns_counter(family, qtype, protocol):
            text = http(daemon.ports["stats"], "/metrics")[1]
            prefix = f'{family}_total{{request_query_type="{qtype}",request_protocol="{protocol}",'
            return sum(int(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))
        # Answered here: over UDP the full name, the short one, the one over IPv6 and the one
        # after the bad datagrams (A), the v4-only service's AAAA; over TCP the single query and the first
        # pipelined one. Forwarded: example.org over each protocol, big.example over UDP, and over TCP the one-label
        # "echo", which is no service in pod a's namespace. None failed (the refused first
        # nameserver is passed over, not a failure).
        assert dns_counter("istio_dns_requests", "a", "udp") == 4
        assert dns_counter("istio_dns_requests", "aaaa", "udp") == 1
        assert dns_counter("istio_dns_requests", "a", "tcp") == 2
        assert dns_counter("istio_dns_upstream_requests", "a", "udp") == 2
        assert dns_counter("istio_dns_upstream_requests", "a", "tcp") == 2
        assert dns_counter("istio_dns_upstream_failures", "a", "udp") + dns_counter("istio_dns_upstream_failures", "a", "tcp") == 0
        # Each forward's duration is in the histogram (§15.1, upstream's buckets): as many as the
        # forwards, each within the 5 s limit, and a positive sum.
        text = http(daemon.ports["stats"], "/metrics")[1]
        name = "istio_dns_upstream_request_duration_seconds"
        assert f"# TYPE {name} histogram" in text
        udp = 'request_query_type="a",request_protocol="udp",'
        series = [l for l in text.splitlines() if l.startswith(name) and udp in l]
        count = sum(int(l.rsplit(" ", 1)[1]) for l in series if l.startswith(name + "_count"))
        inf = sum(int(l.rsplit(" ", 1)[1]) for l in series if l.startswith(name + "_bucket") and 'le="+Inf"' in l)
        within5 = sum(int(l.rsplit(" ", 1)[1]) for l in series if l.startswith(name + "_bucket") and 'le="5"' in l)
        total = sum(float(l.rsplit(" ", 1)[1]) for l in series if l.startswith(name + "_sum"))
        assert count == inf == within5 == dns_counter("istio_dns_upstream_requests", "a", "udp") == 2, series
        assert 0 < total < 10, series

        assert daemon.proc.poll() is None and not daemon.audit_events("worker_exit"), daemon.audit()
    finally:
        stub.close()


def test_dns_capture_off_means_no_proxy_and_on_demand_with_it_is_refused(box, cni, start_daemon):
    """ISTIO_META_DNS_CAPTURE=false: no 15053 in the pod. XDS_ON_DEMAND with the proxy on: the
    daemon refuses to start, as upstream does, and says what to set."""
    a = box.pod("a")
    daemon = start(start_daemon, box, cni, ISTIO_META_DNS_CAPTURE="false")
    enrol(cni, [a])
    wait_ready(daemon)
    wait_for(lambda: 15001 in a.listeners(), 10, "a's listeners")
    assert 15053 not in a.listeners()
    refused = subprocess.run([daemon_binary(), "proxy", "ztunnel"], capture_output=True, text=True, timeout=30,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "INPOD_UDS": cni.path,
                                  "XDS_ADDRESS": "127.0.0.1:1", "XDS_ON_DEMAND": "true"})
    assert refused.returncode != 0 and "ISTIO_META_DNS_CAPTURE=false" in refused.stderr, refused.stderr


def daemon_binary():
    from daemon import ZTUNNEL
    return ZTUNNEL


def test_search_domains_are_stripped_and_a_preferred_namespace_breaks_ties(box, cni, start_daemon, tmp_path):
    """§13: a name that is no service as asked is looked up again with each of ztunnel's own
    search domains (its resolv.conf) stripped; found that way, the answer starts with a CNAME from
    the name asked to the stripped one. A hostname two services have, neither in the client's
    namespace nor canonical, is answered from PREFERED_SERVICE_NAMESPACE's."""
    a = box.pod("a")
    capture_dns(box, a)
    services = SERVICES + textwrap.dedent("""\
        - name: db
          namespace: alpha
          hostname: db.example.com
          vips: ["/10.96.1.1"]
          ports:
            5432: 5432
        - name: db
          namespace: beta
          hostname: db.example.com
          vips: ["/10.96.1.2"]
          ports:
            5432: 5432
        """)
    stub = DnsStub("127.0.0.77", {})
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.77\nsearch istio-system.svc.cluster.local svc.cluster.local cluster.local\n")
    try:
        start_serving_dns(start_daemon, box, cni, a, services, resolv, PREFERED_SERVICE_NAMESPACE="beta")
        suffixed_id, suffixed = query("echo.shop.svc.cluster.local.svc.cluster.local")
        db_id, db = query("db.example.com")
        answers = ask(a, ("udp", suffixed), ("udp", db))
        assert None not in answers, answers
        got_id, flags, records = parse(answers[0])
        assert got_id == suffixed_id and flags & 0xF == 0, hex(flags)
        target = b"".join(bytes([len(l)]) + l.encode() for l in "echo.shop.svc.cluster.local".split(".")) + b"\0"
        assert records == [(5, 30, target), (1, 30, bytes([10, 96, 0, 42]))], records
        assert parse(answers[1])[2] == [(1, 30, bytes([10, 96, 1, 2]))]
        # Answered here, both: nothing was forwarded.
        assert not stub.queries, stub.queries
    finally:
        stub.close()
