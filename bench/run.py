#!/usr/bin/env python3
"""`make bench`: the same work done, in one run on this host, by direct TCP, by an Envoy HBONE pair
(the stand-in for Istio's data plane) and by ours (a client-side daemon, HBONE, a server-side
daemon), printed side by side with ratios. Figures, not pass/fail.

Everything runs inside a network namespace this script makes (and removes), so the iptables rule
that captures the client's traffic into our 15001 touches nothing outside it:

  direct : client -> 127.0.0.2:9081 (the application)
  envoy  : client -> Envoy A 127.0.0.1:10001 (tcp_proxy, HBONE over HTTP/2 + mTLS)
                  -> Envoy B 127.0.0.2:10002 (CONNECT terminated) -> 127.0.0.2:9081
  ours   : client (from 127.0.0.3) -> 127.0.0.2:9080, REDIRECTed to daemon A's 15001
                  -> pooled HBONE -> daemon B's 127.0.0.2:15008 -> 127.0.0.2:9080

Throughput is iperf3's (1 and 8 streams), and the CPU time (user + system, every process of
the stack) spent per GB carried; latency is a 1 KiB request/response ping-pong on one
connection; the connection rate is new connections (each one 1 KiB echoed) per second from 32
concurrent clients, also with BENCH_HELD (4,000) idle connections held open through the stack
(what a new connection costs once a proxy already carries many); handshakes are full mTLS handshakes per second against the server side
(ours signs through a key handle held by the CertWorker); memory is PSS summed over each
stack's processes, idle and with 1,000 connections open through it.

Envoy's and our figures are measured alternately, BENCH_ROUNDS times each (2; envoy, ours, envoy,
ours), and printed as medians with the range of the per-round ratios: on a shared 2-core machine
one round's ratio moves 10-20% with whatever else runs, and the range shows by how much.

BENCH_SECONDS (5) sets the length of each figure; BENCH_ONLY=throughput,latency,connections,
handshakes,memory,held picks rows.
"""
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "integration"))
from identities import MiniCA  # noqa: E402

BIN = os.environ.get("ZTUNNEL_BIN_DIR", os.path.join(ROOT, ".build", "release"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
APP, APP_DIRECT = 9080, 9081          # iperf3 servers: captured (ours), and direct/Envoy
ECHO, ECHO_DIRECT = 9082, 9083        # echo servers, likewise
SERVER, CLIENT = "127.0.0.2", "127.0.0.3"
HELD = int(os.environ.get("BENCH_HELD", "4000"))  # connections held open for the second rate row
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "2")))


def alternated(envoy, ours):
    """Runs `envoy()` and `ours()` alternately ROUNDS times. Each returns a tuple of figures (the
    row's, then its CPU row's). Returns, per figure, (envoy median, ours median, per-round
    ours/envoy ratios)."""
    runs = [(envoy(), ours()) for _ in range(ROUNDS)]
    result = []
    for index in range(len(runs[0][0])):
        pairs = [(e[index], o[index]) for e, o in runs if e[index] is not None and o[index] is not None]
        if not pairs:
            result.append((None, None, []))
            continue
        result.append((statistics.median(e for e, _ in pairs), statistics.median(o for _, o in pairs),
                       [o / e for e, o in pairs if e]))
    return result

CONFIG = f"""
workloads:
- uid: bench//Pod/default/client-1
  name: client-1
  namespace: default
  serviceAccount: client
  trustDomain: cluster.local
  workloadIps: ["{CLIENT}"]
  protocol: HBONE
- uid: bench//Pod/default/server-1
  name: server-1
  namespace: default
  serviceAccount: server
  trustDomain: cluster.local
  workloadIps: ["{SERVER}"]
  protocol: HBONE
"""

ENVOY_A = """
static_resources:
  listeners:
{listeners}
  clusters:
  - name: hbone
    connect_timeout: 5s
    # Istio's clusters lift Envoy's default circuit breakers (1,024 connections and requests).
    circuit_breakers: {{thresholds: [{{max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295}}]}}
    type: STATIC
    load_assignment:
      cluster_name: hbone
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.2, port_value: 10002}}}}}}}}]}}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
          alpn_protocols: ["h2"]
          tls_certificates: [{{certificate_chain: {{filename: "{certs}/client/cert-chain.pem"}}, private_key: {{filename: "{certs}/client/key.pem"}}}}]
          validation_context:
            trusted_ca: {{filename: "{certs}/client/root-cert.pem"}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "spiffe://cluster.local/ns/default/sa/server"}}}}]
"""

ENVOY_A_LISTENER = """
  - name: out{port}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: out{port}
          cluster: hbone
          tunneling_config: {{hostname: "127.0.0.2:{target}"}}
"""

ENVOY_B = """
static_resources:
  listeners:
  - name: hbone_in
    address: {{socket_address: {{address: 127.0.0.2, port_value: 10002}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            alpn_protocols: ["h2"]
            tls_certificates: [{{certificate_chain: {{filename: "{certs}/server/cert-chain.pem"}}, private_key: {{filename: "{certs}/server/key.pem"}}}}]
            validation_context:
              trusted_ca: {{filename: "{certs}/server/root-cert.pem"}}
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: "spiffe://cluster.local/"}}}}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hbone
          codec_type: HTTP2
          http2_protocol_options: {{allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
{clusters}
"""

ENVOY_B_ROUTE = """
              - match: {{connect_matcher: {{}}, headers: [{{name: ":authority", string_match: {{exact: "127.0.0.2:{port}"}}}}]}}
                route: {{cluster: app{port}, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}
"""

ENVOY_B_CLUSTER = """
  - name: app{port}
    connect_timeout: 5s
    # Istio's clusters lift Envoy's default circuit breakers (1,024 connections and requests).
    circuit_breakers: {{thresholds: [{{max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295}}]}}
    type: STATIC
    load_assignment:
      cluster_name: app{port}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.2, port_value: {port}}}}}}}}}]}}]
"""


# -- helpers ----------------------------------------------------------------------------------

def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.05)


def can_connect(host, port):
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def pss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def cpu_seconds(pids):
    """User plus system CPU time used so far by `pids` (all their threads)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def descendants(pid):
    result, todo = [pid], [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/task/{current}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            children = []
        result += children
        todo += children
    return result


# -- the workloads ----------------------------------------------------------------------------

def echo_server(ports):
    async def handle(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def main():
        servers = [await asyncio.start_server(handle, SERVER, port, backlog=4096) for port in ports]
        await asyncio.gather(*(s.serve_forever() for s in servers))
    asyncio.run(main())


def iperf(host, port, streams, pids=(), cpu=None):
    """Gbit/s received; with `cpu` (a dict), also the CPU seconds `pids` spent per GB carried."""
    before = cpu_seconds(pids)
    out = subprocess.run(["iperf3", "-c", host, "-p", str(port), "-B", CLIENT, "-t", str(SECONDS), "-P", str(streams),
                          "-J"], capture_output=True, text=True, timeout=SECONDS + 60)
    try:
        received = json.loads(out.stdout)["end"]["sum_received"]
        if cpu is not None and pids:
            cpu[streams] = (cpu_seconds(pids) - before) / (received["bytes"] / 1e9)
        return received["bits_per_second"] / 1e9
    except (KeyError, ValueError):
        print(f"  iperf3 to {host}:{port} failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        return None


def latency(host, port, count=3000):
    payload = os.urandom(1024)
    with socket.create_connection((host, port), source_address=(CLIENT, 0)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for i in range(count + 300):
            start = time.perf_counter_ns()
            s.sendall(payload)
            got = 0
            while got < len(payload):
                got += len(s.recv(65536))
            if i >= 300:  # warm-up left out
                samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


# Linux's IP_BIND_ADDRESS_NO_PORT: a socket bound to an address with port 0 gets its port at
# connect, unique per destination. Without it, each bind searched for a port no socket on CLIENT
# holds, TIME_WAIT ones included: after the direct and Envoy rows' ~30,000 connections each
# bind took ~16 ms, and whichever stack was measured last (ours) was starved by the client.
IP_BIND_ADDRESS_NO_PORT = 24


async def _open_from_client(host, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((CLIENT, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def _connection_worker(host, port, seconds, result):
    async def main():
        payload = os.urandom(1024)
        deadline = time.monotonic() + seconds
        done = failed = 0

        async def loop():
            nonlocal done, failed
            while time.monotonic() < deadline:
                try:
                    reader, writer = await _open_from_client(host, port)
                    writer.write(payload)
                    await reader.readexactly(len(payload))
                    writer.close()
                    done += 1
                except (OSError, asyncio.IncompleteReadError):
                    failed += 1
                    await asyncio.sleep(0.001)
        await asyncio.gather(*(loop() for _ in range(16)))
        result.put((done, failed))
    asyncio.run(main())


def connection_rate(host, port, pids=(), cpu=None):
    """Connections/s; with `cpu` (a dict), also the CPU microseconds `pids` spent per connection."""
    before = cpu_seconds(pids)
    result = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_connection_worker, args=(host, port, SECONDS, result)) for _ in range(2)]
    for w in workers:
        w.start()
    outcomes = [result.get() for _ in workers]
    for w in workers:
        w.join()
    failed = sum(f for _, f in outcomes)
    if failed:
        print(f"  ({failed} connections to {host}:{port} failed)", flush=True)
    done = sum(d for d, _ in outcomes)
    if cpu is not None and pids and done:
        cpu["us"] = (cpu_seconds(pids) - before) * 1e6 / done
    return done / SECONDS


def _handshake_worker(port, certs, seconds, result):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(f"{certs}/client/root-cert.pem")
    context.load_cert_chain(f"{certs}/client/cert-chain.pem", f"{certs}/client/key.pem")
    context.set_alpn_protocols(["h2"])
    deadline, done = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        with socket.create_connection((SERVER, port), source_address=(CLIENT, 0)) as raw:
            with context.wrap_socket(raw) as tls:
                tls.getpeercert()
        done += 1
    result.put(done)


def handshake_rate(port, certs, pids=(), cpu=None):
    """Handshakes/s; with `cpu` (a dict), also the CPU milliseconds `pids` spent per handshake."""
    before = cpu_seconds(pids)
    result = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_handshake_worker, args=(port, certs, SECONDS, result)) for _ in range(2)]
    for w in workers:
        w.start()
    total = sum(result.get() for _ in workers)
    for w in workers:
        w.join()
    if cpu is not None and pids and total:
        cpu["ms"] = (cpu_seconds(pids) - before) * 1000 / total
    return total / SECONDS


def hold_open(host, port, count):
    """`count` connections through a stack, each carried to the application and back once,
    left open; the caller closes them."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((CLIENT, 0))
            s.settimeout(10)
            s.connect((host, port))
            s.sendall(b"x")
        for s in held:  # each one made it all the way to the application and back
            assert s.recv(1) == b"x"
    except BaseException:
        for s in held:
            s.close()
        raise
    return held


def memory_with_connections(host, port, pids, count=1000):
    idle = pss_kib(pids)
    held = hold_open(host, port, count)
    try:
        loaded = pss_kib(pids)
    finally:
        for s in held:
            s.close()
    return idle, loaded


def connection_rate_while_holding(host, port, count, pids=(), cpu=None):
    """The connection rate with `count` idle connections open through the same stack: what each
    new connection costs once a proxy already carries many (timers, tables)."""
    held = hold_open(host, port, count)
    try:
        rate = connection_rate(host, port, pids, cpu)
        for s in held:  # all still open and carried: the rate was measured with `count` held
            s.sendall(b"y")
            assert s.recv(1) == b"y"
        return rate
    finally:
        for s in held:
            s.close()


# -- the stacks -------------------------------------------------------------------------------

def start_daemon(name, tmp, cacerts, env_extra):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LOCAL_XDS_PATH": f"{tmp}/local.yaml",
           "ZTUNNEL_CA_DIR": cacerts, "ZTUNNEL_AUDIT_LOG": f"{tmp}/{name}-audit.log", "RUST_LOG": "warn"}
    env.update(env_extra)
    log = open(f"{tmp}/{name}.log", "wb")
    proc = subprocess.Popen([os.path.join(BIN, "ztunnel"), "proxy", "ztunnel"], env=env, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    return proc, log


def daemon_ready(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            return b" 200 " in s.recv(100)
    except OSError:
        return False


def inside():
    import resource
    # Thousands of held connections: this process's sockets, and the Envoys' (they inherit it).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="ztunnel-bench-")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Thousands of short connections from one source address: a wide port range and TIME_WAIT
    # reuse (this namespace only), or later rows would run out of ports the earlier ones left in
    # TIME_WAIT and measure bind failures instead of the proxy.
    for key, value in (("net.ipv4.ip_local_port_range", "1024 65000"), ("net.ipv4.tcp_tw_reuse", "1")):
        subprocess.run(["sysctl", "-q", "-w", f"{key}={value}"], check=True)
    ca = MiniCA()
    ca.write_cacerts(f"{tmp}/cacerts")
    ca.issue(f"{tmp}/certs/client", "client")
    ca.issue(f"{tmp}/certs/server", "server")
    with open(f"{tmp}/local.yaml", "w") as f:
        f.write(CONFIG)
    processes = []

    def spawn(*args, **kwargs):
        proc = subprocess.Popen(*args, stdin=subprocess.DEVNULL, **kwargs)
        processes.append(proc)
        return proc
    try:
        for port in (APP, APP_DIRECT):
            spawn(["iperf3", "-s", "-B", SERVER, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        echo = multiprocessing.Process(target=echo_server, args=([ECHO, ECHO_DIRECT],), daemon=True)
        echo.start()
        # Ours: capture the client's traffic to the application ports into daemon A's 15001
        # (the NetWorkers' own connections, uid 65533, are not captured).
        subprocess.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", SERVER, "-m", "multiport",
                        "--dports", f"{APP},{ECHO}", "-m", "owner", "!", "--uid-owner", "65533",
                        "-j", "REDIRECT", "--to-ports", "15001"], check=True)
        a, a_log = start_daemon("daemon-a", tmp, f"{tmp}/cacerts", {
            "ZTUNNEL_INBOUND_ADDR": f"{CLIENT}:15008", "ZTUNNEL_READINESS_ADDR": "127.0.0.1:15021"})
        b, b_log = start_daemon("daemon-b", tmp, f"{tmp}/cacerts", {
            "ZTUNNEL_INBOUND_ADDR": f"{SERVER}:15008", "ZTUNNEL_OUTBOUND_ADDR": "127.0.0.1:25001",
            "ZTUNNEL_INBOUND_PLAINTEXT_ADDR": "127.0.0.1:25006", "ZTUNNEL_SOCKS5_ADDR": "127.0.0.1:25080",
            "ZTUNNEL_ADMIN_ADDR": "127.0.0.1:25000", "ZTUNNEL_STATS_ADDR": "127.0.0.1:25020",
            "ZTUNNEL_READINESS_ADDR": "127.0.0.1:25021"})
        processes += [a, b]
        wait_for(lambda: daemon_ready(15021) and daemon_ready(25021), 60, "both daemons ready")
        envoy_a = ENVOY_A.format(certs=f"{tmp}/certs", listeners="".join(
            ENVOY_A_LISTENER.format(port=port, target=target) for port, target in ((10001, APP_DIRECT), (10003, ECHO_DIRECT))))
        envoy_b = ENVOY_B.format(certs=f"{tmp}/certs",
                                 routes="".join(ENVOY_B_ROUTE.format(port=p) for p in (APP_DIRECT, ECHO_DIRECT)),
                                 clusters="".join(ENVOY_B_CLUSTER.format(port=p) for p in (APP_DIRECT, ECHO_DIRECT)))
        envoys = []
        for name, text in (("envoy-a", envoy_a), ("envoy-b", envoy_b)):
            with open(f"{tmp}/{name}.yaml", "w") as f:
                f.write(text)
            log = open(f"{tmp}/{name}.log", "wb")
            envoys.append(spawn([shutil.which("envoy"), "-c", f"{tmp}/{name}.yaml", "--base-id", str(os.getpid() % 60000 + len(envoys)),
                                 "--disable-hot-restart", "-l", "error"], stdout=log, stderr=log))
        wait_for(lambda: can_connect("127.0.0.1", 10001) and can_connect(SERVER, 10002), 60, "both Envoys listening")
        # Certificates first: the daemons' CertWorkers have their identities once a tunnel works.
        wait_for(lambda: _round_trip(SERVER, ECHO), 60, "a first tunnel through our daemons")
        wait_for(lambda: _round_trip("127.0.0.1", 10003), 60, "a first tunnel through the Envoys")

        ours_pids = descendants(a.pid) + descendants(b.pid)
        envoy_pids = [e.pid for e in envoys]
        rows = []
        print(f"\nbench: {SECONDS:.0f} s per figure, {os.cpu_count()} cores, binaries from {BIN}\n", flush=True)

        def row(name, unit, direct, envoy, ours, better="higher", ratios=()):
            rows.append((name, unit, direct, envoy, ours, better))
            fmt = lambda v: "-" if v is None else (f"{v:,.2f}" if v < 100 else f"{v:,.0f}")  # noqa: E731
            ratio = "-" if not envoy or ours is None else f"{ours / envoy:.2f}x"
            spread = f", rounds {min(ratios):.2f}-{max(ratios):.2f}x" if len(ratios) > 1 else ""
            print(f"{name:34} {fmt(direct):>10} {fmt(envoy):>10} {fmt(ours):>10} {ratio:>8}  ({unit}, {better} is better{spread})",
                  flush=True)

        def alternated_rows(names, direct, envoy, ours):
            """Rows `names` (name, unit, better) from `alternated(envoy, ours)`; `direct` for the first."""
            for (name, unit, better), (e, o, ratios), d in zip(names, alternated(envoy, ours), (direct, None, None)):
                row(name, unit, d, e, o, better, ratios)
        print(f"{'':34} {'direct':>10} {'envoy':>10} {'ours':>10} {'ours/envoy':>8}")
        only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
        wanted = lambda name: not only or name in only  # noqa: E731
        if wanted("throughput"):
            # CPU per GB is the steadier figure on a shared 2-core machine: the throughput rows
            # move with whatever else runs, the work each byte costs does not.
            def carried(host, port, streams, pids):
                cpu = {}
                return iperf(host, port, streams, pids, cpu), cpu.get(streams)
            for streams in (1, 8):
                plural = "s" if streams > 1 else ""
                alternated_rows([(f"throughput, {streams} stream{plural}", "Gbit/s", "higher"),
                                 (f"proxy CPU per GB, {streams} stream{plural}", "CPU s/GB", "lower")],
                                iperf(SERVER, APP_DIRECT, streams),
                                lambda: carried("127.0.0.1", 10001, streams, envoy_pids), lambda: carried(SERVER, APP, streams, ours_pids))
        if wanted("latency"):
            direct = latency(SERVER, ECHO_DIRECT)
            for index, (e, o, ratios) in enumerate(alternated(lambda: latency("127.0.0.1", 10003), lambda: latency(SERVER, ECHO))):
                row(f"latency p{(50, 99)[index]}, 1 KiB echo", "µs", direct[index], e, o, "lower", ratios)
        if wanted("connections"):
            def rate(host, port, pids):
                cpu = {}
                return connection_rate(host, port, pids, cpu), cpu.get("us")
            alternated_rows([("new connections/s (pooled HBONE)", "conn/s", "higher"), ("proxy CPU per connection", "CPU µs", "lower")],
                            connection_rate(SERVER, ECHO_DIRECT),
                            lambda: rate("127.0.0.1", 10003, envoy_pids), lambda: rate(SERVER, ECHO, ours_pids))
        if wanted("handshakes"):
            def handshakes(port, pids):
                cpu = {}
                return handshake_rate(port, f"{tmp}/certs", pids, cpu), cpu.get("ms")
            alternated_rows([("full mTLS handshakes/s", "handshakes/s", "higher"), ("server CPU per handshake", "CPU ms", "lower")],
                            None, lambda: handshakes(10002, envoy_pids), lambda: handshakes(15008, ours_pids))
        if wanted("memory"):
            envoy_idle, envoy_loaded = memory_with_connections("127.0.0.1", 10003, envoy_pids)
            ours_idle, ours_loaded = memory_with_connections(SERVER, ECHO, ours_pids)
            row("memory idle (PSS, both sides)", "MiB", None, envoy_idle / 1024, ours_idle / 1024, "lower")
            row("memory, 1,000 connections open", "MiB", None, envoy_loaded / 1024, ours_loaded / 1024, "lower")
            row("memory per connection (both sides)", "KiB", None, (envoy_loaded - envoy_idle) / 1000,
                (ours_loaded - ours_idle) / 1000, "lower")
        if wanted("held"):
            # Last: thousands of held connections grow every process's heap for good, which
            # would show in the memory rows.
            def rate_holding(host, port, pids):
                cpu = {}
                return connection_rate_while_holding(host, port, HELD, pids, cpu), cpu.get("us")
            alternated_rows([(f"new connections/s, {HELD:,} held open", "conn/s", "higher"),
                             (f"proxy CPU per connection, {HELD:,} open", "CPU µs", "lower")],
                            None, lambda: rate_holding("127.0.0.1", 10003, envoy_pids), lambda: rate_holding(SERVER, ECHO, ours_pids))
        if os.environ.get("BENCH_HOLD"):  # keep the stacks up for a profiler: BENCH_HOLD=seconds
            print(f"holding for {os.environ['BENCH_HOLD']} s: daemon A {a.pid}, daemon B {b.pid}", flush=True)
            time.sleep(float(os.environ["BENCH_HOLD"]))
        print(f"\n(goal: ours/envoy >= 1.5 for throughput and connection rate, <= 0.75 for latency and memory)")
        print(f"(logs and configuration: {tmp})")
    finally:
        for proc in reversed(processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _round_trip(host, port):
    try:
        with socket.create_connection((host, port), source_address=(CLIENT, 0), timeout=3) as s:
            s.sendall(b"ping")
            return s.recv(4) == b"ping"
    except OSError:
        return False


def main():
    if "--inside" in sys.argv:
        return inside()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (a network namespace, iptables, the daemons' uid switch)")
    for tool in ("iperf3", "envoy", "iptables"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing (make deps installs it)")
    if not os.path.exists(os.path.join(BIN, "ztunnel")):
        sys.exit(f"bench: no {BIN}/ztunnel (make bench builds it with swift build -c release)")
    name = f"ztbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        code = subprocess.run(["ip", "netns", "exec", name, sys.executable, os.path.abspath(__file__), "--inside"]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    sys.exit(code)


if __name__ == "__main__":
    main()
