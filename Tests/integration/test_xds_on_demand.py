"""XDS_ON_DEMAND (ISTIO_COMPAT §6.3, §6.4, §9 step 2): the daemon subscribes to no Address at
start ("*" subscribed and unsubscribed), is ready once Authorization is ACKed, and asks istiod for
an address only when a connection needs it: a request naming the key ("<network>/<IP>", a uid
or "<namespace>/<hostname>") with no nonce. The connection waits for the answer: a known service is
reached over HBONE, an address istiod answers as removed is passed through as plain TCP. What was
fetched stays subscribed, so istiod's later updates to it arrive. The istiod double
(xds_double.py) resolves the keys as istiod's ambient index does and records what was asked.

These run the real binaries. DNS capture is switched off: §13 makes the DNS proxy and
XDS_ON_DEMAND a startup error together."""
import pytest

from daemon import EchoServer, http, socks5_connect, wait_for
from test_outbound_hbone import round_trip
from test_xds import (CLIENT_ID, ECHO_HOST, ECHO_ID, ECHO_UID, acked, echo_through_mesh,
                      identities_ready, mesh, start)

grpc = pytest.importorskip("grpc")
import xds_double as x  # noqa: E402

ON_DEMAND = {"XDS_ON_DEMAND": "true", "ISTIO_META_DNS_CAPTURE": "false"}
ECHO_SVC = f"shop/{ECHO_HOST}"  # the service's resource name (§6.3)
VIP_KEY = "/10.96.0.9"          # "<network>/<IP>", network empty: NETWORK is not set
CLIENT_KEY = "/127.0.0.3"
UNKNOWN_IP = "127.0.0.9"
# Keys a connection from the client to the VIP may make the daemon ask for: the destination, and
# the source workload (accepted, not required).
VIP_CONNECTION_KEYS = {VIP_KEY, CLIENT_KEY}


@pytest.fixture
def on_demand(start_daemon, xds):
    """The test_xds mesh (client 127.0.0.3, echo workload 127.0.0.2 behind VIP 10.96.0.9, both
    HBONE on node-a) in the double's state; the daemon started with XDS_ON_DEMAND=true and ready.
    Nothing of the mesh has been pushed: on demand, istiod sends only what is asked for."""
    echo = EchoServer(host="127.0.0.2")
    try:
        mesh(xds, echo.port)
        daemon = start(start_daemon, xds, ON_DEMAND)
        daemon.wait_ready()
        yield daemon, echo
    finally:
        echo.close()


def socks5_echo(daemon, host, port, payload, timeout=30):
    """One SOCKS5 CONNECT from the client workload (127.0.0.3), with a timeout generous enough
    for the on-demand lookup and the certificates it leads to; the echoed bytes, or the SOCKS5
    reply code when refused."""
    sock, code = socks5_connect(daemon.ports["socks5"], port, host, timeout=timeout, source="127.0.0.3")
    with sock:
        return round_trip(sock, payload) if code == 0 else code


def is_fetch(_, r):
    """An on-demand request: Address, not the stream's first for the type, no nonce, naming keys
    (a request that only unsubscribes answered keys is not one)."""
    return (r["type_url"] == x.ADDRESS and not r["initial"] and not r["response_nonce"]
            and bool(r["resource_names_subscribe"]))


def fetches(xds, since=0):
    return xds.requests(is_fetch, since=since)


def fetch_of(xds, key, since=0, timeout=30):
    return xds.wait_for(lambda i, r: is_fetch(i, r) and key in r["resource_names_subscribe"], timeout, since=since)


def answer_to(xds, request):
    """The double's one response to `request`."""
    answers = xds.answers(request)
    assert len(answers) == 1, f"the double answered request #{request['seq']} {len(answers)} times"
    return answers[0]


def assert_well_formed_fetches(requests):
    """§6.3 "On-demand fetch": type Address, keys in resource_names_subscribe, nothing
    unsubscribed, no nonce, no error; node only on a stream's first request (§6.2)."""
    for r in requests:
        assert r["resource_names_subscribe"] and "*" not in r["resource_names_subscribe"], r
        assert r["resource_names_unsubscribe"] == [] and r["error_detail"] is None, r
        assert r["node"] is None and r["initial_resource_versions"] == {}, r


def dump_workload(daemon, uid):
    return next((w for w in daemon.config_dump()["workloads"] if w["uid"] == uid), None)


def outbound_access_line(daemon, marker):
    return next((l for l in daemon.log().splitlines()
                 if "\taccess\tconnection complete" in l and "direction=outbound" in l and marker in l), None)


def test_on_demand_subscribes_to_no_address_and_is_ready_once_authorization_is_acked(on_demand, xds):
    """§6.3: the first Address request subscribes to nothing ("*" and "*" unsubscribed);
    Authorization stays wildcard. §6.4: readiness waits only for the non-on-demand type."""
    daemon, _ = on_demand
    first = xds.wait_for(lambda _, r: r["initial"] and r["type_url"] == x.ADDRESS, 30)
    assert first["resource_names_subscribe"] == ["*"], first["resource_names_subscribe"]
    assert first["resource_names_unsubscribe"] == ["*"], first["resource_names_unsubscribe"]
    assert first["node"] is not None and first["response_nonce"] == ""
    auth = xds.wait_for(lambda _, r: r["initial"] and r["type_url"] == x.AUTHORIZATION, 30)
    assert auth["resource_names_subscribe"] == [] and auth["resource_names_unsubscribe"] == [], auth
    assert auth["stream"] == first["stream"]
    assert xds.streams[first["stream"]]["subscriptions"][x.ADDRESS] == {"wildcard": False, "names": set()}
    # istiod answers the "subscribe to nothing" request with an empty response; it is ACKed
    # like every response, and Authorization's too.
    empty = answer_to(xds, first)
    assert empty["resources"] == [] and empty["removed"] == []
    acked(xds, x.AUTHORIZATION)
    acked(xds, x.ADDRESS)

    status, body = http(daemon.ports["readiness"], "/healthz/ready")
    assert status == 200, body
    # Ready with no Address known: nothing was asked for, nothing was sent.
    assert fetches(xds) == [], fetches(xds)
    assert all(not r["resources"] for s in xds.streams for r in s["responses"] if r["type_url"] == x.ADDRESS)
    dump = daemon.config_dump()
    assert dump["workloads"] == [] and dump["services"] == [], (dump["workloads"], dump["services"])


def test_on_demand_fetches_the_service_vip_and_carries_traffic_over_hbone(on_demand, xds):
    """§9 step 2: the connection to an unknown VIP waits for the lookup of "/10.96.0.9"; istiod
    sends the service with its endpoint; the first attempt reaches the echo workload over HBONE
    with both identities."""
    daemon, _ = on_demand
    acked(xds, x.AUTHORIZATION)
    mark = xds.mark()
    assert socks5_echo(daemon, "10.96.0.9", 80, b"fetched on demand") == b"fetched on demand"

    fetch = fetch_of(xds, VIP_KEY, since=mark)
    answer = answer_to(xds, fetch)
    assert {ECHO_SVC, ECHO_UID} <= {name for name, _ in answer["resources"]}, answer["resources"]
    assert answer["removed"] == []
    asked = fetches(xds, since=mark)
    assert_well_formed_fetches(asked)
    keys = {k for r in asked for k in r["resource_names_subscribe"]}
    assert keys <= VIP_CONNECTION_KEYS, f"unexpected on-demand keys {keys - VIP_CONNECTION_KEYS}"
    assert xds.requests(lambda _, r: x.is_nack(r), since=mark) == []
    xds.wait_for(lambda _, r: r["type_url"] == x.ADDRESS and x.is_ack(r) and r["response_nonce"] == answer["nonce"],
                 30, since=mark)

    line = wait_for(lambda: outbound_access_line(daemon, f"dst.identity={ECHO_ID}"), 10,
                    "the outbound access line naming the echo identity (HBONE, not passthrough)")
    assert f"src.identity={CLIENT_ID}" in line and f"dst.service={ECHO_HOST}" in line, line
    wait_for(lambda: identities_ready(daemon), 30, "both identities, wanted once the workloads were fetched")
    wait_for(lambda: dump_workload(daemon, ECHO_UID) is not None, 10, "the fetched echo workload in /config_dump")
    services = daemon.config_dump()["services"]
    assert any(s["hostname"] == ECHO_HOST and ECHO_UID in s.get("endpoints", {}) for s in services), services


def test_on_demand_unknown_destination_is_passed_through(on_demand, xds):
    """An address istiod does not know: the daemon asks for it, istiod answers it as removed, and
    the connection goes on as plain TCP to the original destination (§9 step 3, passthrough)."""
    daemon, _ = on_demand
    acked(xds, x.AUTHORIZATION)
    stranger = EchoServer(host=UNKNOWN_IP)
    try:
        assert xds.resolve(f"/{UNKNOWN_IP}") == [], "the test's unknown address is in the double's state"
        mark = xds.mark()
        assert socks5_echo(daemon, UNKNOWN_IP, stranger.port, b"nobody knows me") == b"nobody knows me"
        fetch = fetch_of(xds, f"/{UNKNOWN_IP}", since=mark)
        answer = answer_to(xds, fetch)
        assert f"/{UNKNOWN_IP}" in answer["removed"], answer
        assert all(f"/{UNKNOWN_IP}" not in keys for keys in answer["aliases"].values()), answer
        assert_well_formed_fetches(fetches(xds, since=mark))
        xds.wait_for(lambda _, r: r["type_url"] == x.ADDRESS and x.is_ack(r) and r["response_nonce"] == answer["nonce"],
                     30, since=mark)
        assert not any(UNKNOWN_IP in w.get("workloadIps", []) for w in daemon.config_dump()["workloads"])
        # istiod keeps a name subscribed and answers it again only if it is asked afresh: the
        # daemon unsubscribes the answered key, so the next connection's lookup is answered too.
        xds.wait_for(lambda _, r: r["type_url"] == x.ADDRESS and f"/{UNKNOWN_IP}" in r["resource_names_unsubscribe"],
                     30, since=mark)
        again = xds.mark()
        assert socks5_echo(daemon, UNKNOWN_IP, stranger.port, b"still nobody") == b"still nobody"
        second = fetch_of(xds, f"/{UNKNOWN_IP}", since=again)
        assert f"/{UNKNOWN_IP}" in answer_to(xds, second)["removed"]
        assert not xds.requests(lambda _, r: r.get("unanswered"), since=again)
    finally:
        stranger.close()


def test_on_demand_fetched_workload_follows_istiod_updates(on_demand, xds):
    """Fetched resources stay subscribed by name (istiod records what it sent): an update to the
    echo workload is pushed, ACKed and in force; traffic still flows after the replacement."""
    daemon, echo = on_demand
    acked(xds, x.AUTHORIZATION)
    assert socks5_echo(daemon, "10.96.0.9", 80, b"before the update") == b"before the update"
    wait_for(lambda: dump_workload(daemon, ECHO_UID) is not None, 30, "the fetched echo workload in /config_dump")
    assert dump_workload(daemon, ECHO_UID).get("canonicalName") != "echo-v2"

    mark = xds.mark()
    updated = x.address_of_workload(x.workload(
        ECHO_UID, "echo-1", "shop", addresses=["127.0.0.2"], service_account="echo", node="node-a",
        services={ECHO_SVC: {80: echo.port}}, canonical_name="echo-v2", canonical_revision="v2"))
    nonce = xds.set_resource(x.ADDRESS, ECHO_UID, updated)
    assert nonce is not None, ("the double pushed the update to no stream: the daemon's lookup did not "
                               f"subscribe it to {ECHO_UID}")
    xds.wait_for(lambda _, r: r["type_url"] == x.ADDRESS and x.is_ack(r) and r["response_nonce"] == nonce,
                 30, since=mark)
    wait_for(lambda: (dump_workload(daemon, ECHO_UID) or {}).get("canonicalName") == "echo-v2", 30,
             "the pushed canonicalName echo-v2 in /config_dump")
    assert dump_workload(daemon, ECHO_UID).get("canonicalRevision") == "v2"
    # The workload was replaced (§6.3: remove, then insert) and is still the VIP's endpoint.
    assert echo_through_mesh(daemon, b"after the update") == b"after the update"


def test_a_networker_flooding_on_demand_lookups_reaches_istiod_bounded(start_daemon, xds):
    """A NetWorker (compromised, here a fault) sends 5,000 on-demand lookups at once. The
    Supervisor relays at most 1,024 a second of them and says so when it drops the rest (the
    budget's arithmetic: PerSecondBudgetTests), and none while the xDS worker's channel is
    filling; so istiod is asked for a bounded share (three seconds' worth at most, should the
    Supervisor's reading of the burst straddle two second boundaries on a loaded machine), and
    the NetWorker is not killed for it. Barriers, not waits: the flood ends with the xDS
    worker's open-file probe, relayed in order behind it; then a push whose ACK reaches the
    double after every request sent before it."""
    from test_sandbox import FAULTS, fault_line, inject
    mesh(xds, 9)
    daemon = start(start_daemon, xds, {**ON_DEMAND, **FAULTS})
    daemon.wait_ready()
    (net,) = daemon.workers("net-worker")
    inject(daemon, "demand-flood")
    wait_for(lambda: fault_line(daemon, "xds-open-file"), 30, "the flood's end marker")
    mark = xds.mark()
    nonce = xds.set_resource(x.AUTHORIZATION, "shop/barrier", x.authorization("barrier", "shop"))
    wait_for(lambda: xds.requests(lambda _, r: r["response_nonce"] == nonce, since=mark), 30, "the barrier's ACK")
    flooded = {key for r in fetches(xds) for key in r["resource_names_subscribe"] if key.startswith("/10.200.")}
    assert 0 < len(flooded) <= 3 * 1024, f"{len(flooded)} of the flood's 5,000 keys reached istiod"
    assert "asked for more than 1024 on-demand lookups this second; dropping the rest" in daemon.log()
    assert daemon.workers("net-worker") == [net], "the NetWorker was replaced for flooding"
