"""With several NetWorkers a scrape lands on any one of them (each has its own SO_REUSEPORT copy
of the stats listener) and must still show one set of counters (issue #8): each NetWorker
publishes its counters in a shared region the Supervisor made, read-only to the others, and a
scrape sums them."""
import os
import signal
import time

from daemon import http, socks5_connect, wait_for


def opened_total(daemon):
    text = http(daemon.ports["stats"], "/metrics")[1]
    return sum(int(line.split()[-1]) for line in text.splitlines() if line.startswith("istio_tcp_connections_opened_total{"))


def test_every_scrape_counts_the_connections_of_every_networker(start_daemon, echo_server):
    daemon = start_daemon(extra_env={"ZTUNNEL_NET_WORKERS": "2", "UNSTABLE_ENABLE_SOCKS5": "true"})
    daemon.wait_ready()
    count = 40
    for _ in range(count):
        sock, code = socks5_connect(daemon.ports["socks5"], echo_server.port)
        with sock:
            assert code == 0
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
    # The kernel spreads the connections, and the scrapes, over both NetWorkers; every scrape
    # must show all of them once each worker has published (within a second).
    wait_for(lambda: opened_total(daemon) == count, 30, "a scrape with every connection")
    assert [opened_total(daemon) for _ in range(10)] == [count] * 10
    # The event loops of both NetWorkers, side by side, each having worked (ticks, busy time as a
    # decimal counter that survives the merge), and their number summed.
    text = http(daemon.ports["stats"], "/metrics")[1]
    def series(name):
        return {l[len(name) + 1:].split("}")[0]: l.rsplit(" ", 1)[1] for l in text.splitlines() if l.startswith(name + "{")}
    ticks, busy = series("ztunnel_event_loop_ticks_total"), series("ztunnel_event_loop_busy_seconds_total")
    assert {key.split(",")[0] for key in ticks} == {'net_worker="0"', 'net_worker="1"'}, ticks
    assert ticks.keys() == busy.keys() and all(int(v) > 0 for v in ticks.values()), (ticks, busy)
    assert all(float(v) >= 0 and "." in v for v in busy.values()), busy
    loops = [l for l in text.splitlines() if l.startswith("ztunnel_event_loops ")]
    assert loops == [f"ztunnel_event_loops {len(ticks)}"], loops

    # A NetWorker killed and replaced: what it counted stays in the sum (its successor starts
    # from what its region held), so the counter does not go back (Prometheus would see a reset).
    victim = daemon.workers("net-worker")[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(daemon.workers("net-worker")) == 2 and victim not in daemon.workers("net-worker"), 30,
             "the replacement NetWorker")
    daemon.wait_ready()
    # Both NetWorkers publish every second and on every scrape they answer: over three seconds of
    # scrapes the total never moves.
    end = time.monotonic() + 3
    while time.monotonic() < end:
        assert opened_total(daemon) == count
