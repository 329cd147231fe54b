"""The istiod delta-ADS double, exercised with a real grpcio client so the Swift client's tests can trust it."""
import queue
import threading

import pytest

grpc = pytest.importorskip("grpc")

from xds_double import (ADDRESS, AUTHORIZATION, METHOD, WireError, XdsDouble,  # noqa: E402
                        address_of_service, address_of_workload, authorization, describe_address,
                        decode_delta_request, decode_delta_response, encode_delta_request,
                        encode_delta_response, is_ack, is_nack, service, workload)

UID = "Kubernetes//Pod/default/app-1"
NODE = {"id": "ztunnel~10.0.0.9~ztunnel-x.istio-system~istio-system.svc.cluster.local",
        "metadata": {"NAME": "ztunnel-x", "NAMESPACE": "istio-system", "ISTIO_VERSION": "1.24.0",
                     "JSON": {"list": ["a", 1.0], "flag": True}}}


@pytest.fixture
def xds(tmp_path):
    server = XdsDouble(str(tmp_path))
    server.start()
    yield server
    server.stop()


class Client:
    """One DeltaAggregatedResources stream; responses are read on a thread into a queue."""

    def __init__(self, xds, token="tok"):
        with open(xds.root_pem_path, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        self.channel = grpc.secure_channel(xds.address, credentials,
                                           options=[("grpc.ssl_target_name_override", xds.server_name)])
        self._out, self._in = queue.Queue(), queue.Queue()
        self.call = self.channel.stream_stream(METHOD)(
            iter(self._out.get, None),
            metadata=[("authorization", f"Bearer {token}"), ("clusterid", "Kubernetes")], timeout=20)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for raw in self.call:
                self._in.put(decode_delta_response(raw))
        except grpc.RpcError as e:
            self._in.put(e)
            return
        self._in.put("end")

    def send(self, **kwargs):
        self._out.put(encode_delta_request(**kwargs))

    def send_raw(self, raw):
        self._out.put(raw)

    def recv(self, timeout=5):
        item = self._in.get(timeout=timeout)
        assert isinstance(item, dict), f"expected a response, got {item!r}"
        return item

    def ended(self, timeout=5):
        item = self._in.get(timeout=timeout)
        assert not isinstance(item, dict), f"expected the end of the stream, got {item!r}"
        return item

    def close(self):
        self._out.put(None)
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def connect(xds):
    clients = []

    def make(**kwargs):
        clients.append(Client(xds, **kwargs))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def test_initial_state_ack_push_remove_and_end(xds, connect):
    wl = address_of_workload(workload(UID, "app-1", "default", addresses=["10.0.0.1"],
                                      services={"default/app.default.svc.cluster.local": {80: 8080}}))
    svc = address_of_service(service("app", "default", "app.default.svc.cluster.local"))
    xds.set_resource(ADDRESS, UID, wl, version="v1")
    xds.set_resource(ADDRESS, "default/app.default.svc.cluster.local", svc)

    client = connect()
    client.send(type_url=ADDRESS, node=NODE)
    first = client.recv()
    assert first["type_url"] == ADDRESS and first["nonce"] and first["removed_resources"] == []
    assert first["system_version_info"]
    by_name = {r["name"]: r for r in first["resources"]}
    assert set(by_name) == {UID, "default/app.default.svc.cluster.local"}
    assert by_name[UID]["version"] == "v1" and by_name[UID]["value"] == wl
    assert by_name[UID]["type_url"] == ADDRESS

    client.send(type_url=ADDRESS, response_nonce=first["nonce"])
    ack = xds.wait_for(lambda i, r: is_ack(r) and r["response_nonce"] == first["nonce"])
    assert ack["nonce_known"] and not is_nack(ack) and ack["node"] is None and ack["stream"] == 0

    [stream] = xds.streams
    assert stream["authorization"] == "Bearer tok" and stream["clusterid"] == "Kubernetes"
    initial = stream["requests"][0]
    assert initial["initial"] and initial["node"]["id"] == NODE["id"]
    assert initial["node"]["metadata"] == NODE["metadata"]
    assert initial["resource_names_subscribe"] == [] and initial["initial_resource_versions"] == {}
    assert stream["subscriptions"][ADDRESS]["wildcard"]

    # The second type: answered even though the state holds none of it.
    client.send(type_url=AUTHORIZATION)
    empty = client.recv()
    assert empty["type_url"] == AUTHORIZATION and empty["resources"] == [] and empty["removed_resources"] == []
    client.send(type_url=AUTHORIZATION, response_nonce=empty["nonce"], error_detail="x: bad")
    nack = xds.wait_for(lambda i, r: is_nack(r))
    assert nack["error_detail"] == "x: bad" and nack["response_nonce"] == empty["nonce"]

    # Pushes reach the open stream; only the changed resource is sent.
    policy = authorization("deny", "default", action="DENY", groups=[[[{"principals": ["spiffe://x"]}]]])
    nonce = xds.set_resource(AUTHORIZATION, "default/deny", policy)
    pushed = client.recv()
    assert pushed["nonce"] == nonce and [r["name"] for r in pushed["resources"]] == ["default/deny"]
    assert pushed["resources"][0]["value"] == policy and pushed["type_url"] == AUTHORIZATION

    nonce = xds.remove_resource(ADDRESS, UID)
    removed = client.recv()
    assert removed["nonce"] == nonce and removed["removed_resources"] == [UID] and removed["resources"] == []

    nonce = xds.push_raw(ADDRESS, resources=[("bad", "9", b"\xff")])
    raw = client.recv()
    assert raw["nonce"] == nonce and raw["resources"][0]["value"] == b"\xff"
    assert UID not in xds.resources(ADDRESS) and "bad" not in xds.resources(ADDRESS)
    assert len({r["nonce"] for r in stream["responses"]}) == len(stream["responses"]) == 5

    assert xds.end_streams(grpc.StatusCode.UNAVAILABLE, "go away") == 1
    err = client.ended()
    assert err.code() == grpc.StatusCode.UNAVAILABLE and err.details() == "go away"
    assert xds.stream_count == 1 and xds.open_stream_count == 0 and xds.errors == []
    assert xds.set_resource(ADDRESS, "other", b"") is None  # no stream to push to


def test_reconnect_is_told_what_went_away(xds, connect):
    xds.set_resource(ADDRESS, "kept", b"\x0a\x00", version="3")
    client = connect()
    client.send(type_url=ADDRESS, node=NODE, initial_resource_versions={"kept": "3", "gone": "1"})
    first = client.recv()
    assert [r["name"] for r in first["resources"]] == ["kept"] and first["removed_resources"] == ["gone"]
    assert xds.wait_for_streams(1)[0]["requests"][0]["initial_resource_versions"] == {"kept": "3", "gone": "1"}


def test_on_demand_subscribes_to_nothing_then_to_names(xds, connect):
    xds.set_resource(ADDRESS, "a", b"A")
    xds.set_resource(ADDRESS, "b", b"B")
    client = connect()
    client.send(type_url=ADDRESS, node=NODE, subscribe=["*"], unsubscribe=["*"])
    assert client.recv()["resources"] == []
    client.send(type_url=ADDRESS, subscribe=["a", "missing"])
    fetched = client.recv()
    assert [r["name"] for r in fetched["resources"]] == ["a"] and fetched["removed_resources"] == ["missing"]
    assert xds.set_resource(ADDRESS, "b", b"B2") is None  # not subscribed
    nonce = xds.set_resource(ADDRESS, "a", b"A2")
    assert client.recv()["nonce"] == nonce


ECHO_UID, CLIENT_UID, REMOTE_UID, V6_UID = ("t//Pod/shop/echo-1", "t//Pod/default/client-1",
                                           "t//Pod/shop/remote-1", "t//Pod/default/v6-1")
ECHO_SVC = "shop/echo.shop.svc.cluster.local"


def on_demand_mesh(xds):
    """A service with VIP 10.96.0.9 and its endpoint, a client, a workload on another network
    sharing an address with nothing local, an IPv6 workload, and an unrelated one."""
    bodies = {
        ECHO_UID: address_of_workload(workload(ECHO_UID, "echo-1", "shop", addresses=["127.0.0.2"],
                                               services={ECHO_SVC: {80: 8080}})),
        CLIENT_UID: address_of_workload(workload(CLIENT_UID, "client-1", "default", addresses=["127.0.0.3"])),
        REMOTE_UID: address_of_workload(workload(REMOTE_UID, "remote-1", "shop", addresses=["10.0.0.1"],
                                                 network="net-b", services={ECHO_SVC: {80: 8080}})),
        V6_UID: address_of_workload(workload(V6_UID, "v6-1", "default", addresses=["fd00::1"])),
        ECHO_SVC: address_of_service(service("echo", "shop", "echo.shop.svc.cluster.local",
                                             addresses=[("", "10.96.0.9")])),
        "t//Pod/x/other-1": address_of_workload(workload("t//Pod/x/other-1", "other-1", "x", addresses=["127.0.0.5"])),
    }
    for name, body in bodies.items():
        xds.set_resource(ADDRESS, name, body, version=f"v-{name}")
    return bodies


def test_on_demand_keys_are_resolved_as_istiod_does(xds):
    """§6.3 keys: "<network>/<IP>" (workload IPs first, then service VIPs; a service comes with
    its endpoints), "<namespace>/<hostname>", a workload uid; nothing found -> []."""
    on_demand_mesh(xds)
    assert xds.resolve("/10.96.0.9") == [ECHO_SVC, ECHO_UID, REMOTE_UID]  # endpoints on any network
    assert xds.resolve(ECHO_SVC) == [ECHO_SVC, ECHO_UID, REMOTE_UID]
    assert xds.resolve("/127.0.0.3") == [CLIENT_UID] and xds.resolve(CLIENT_UID) == [CLIENT_UID]
    assert xds.resolve("net-b/10.0.0.1") == [REMOTE_UID] and xds.resolve("/10.0.0.1") == []
    assert xds.resolve("/fd00:0:0::1") == [V6_UID]  # compared as addresses, not as text
    for unknown in ("/127.0.0.9", "net-b/10.96.0.9", "shop/nope.shop.svc.cluster.local", "t//Pod/x/gone",
                    "no-slash", "/not-an-ip"):
        assert xds.resolve(unknown) == [], unknown
    # A workload holding a VIP's address wins over the service; all workloads sharing an IP come back.
    xds.set_resource(ADDRESS, "t//Pod/a/w1", address_of_workload(workload("t//Pod/a/w1", "w1", "a", addresses=["10.96.0.9"])))
    xds.set_resource(ADDRESS, "t//Pod/a/w2", address_of_workload(workload("t//Pod/a/w2", "w2", "a", addresses=["10.96.0.9"])))
    assert xds.resolve("/10.96.0.9") == ["t//Pod/a/w1", "t//Pod/a/w2"]
    # Bodies the double cannot read are found by name only.
    xds.set_resource(ADDRESS, "opaque/10.96.0.10", b"\xff\xff")
    assert xds.resolve("opaque/10.96.0.10") == ["opaque/10.96.0.10"] and describe_address(b"\xff\xff") is None
    assert describe_address(xds.resources(ADDRESS)[ECHO_SVC][1]) == {
        "kind": "service", "key": ECHO_SVC, "vips": [("", "10.96.0.9")]}


def test_on_demand_answers_under_real_names_with_aliases_and_follows_them(xds, connect):
    bodies = on_demand_mesh(xds)
    client = connect()
    client.send(type_url=ADDRESS, node=NODE, subscribe=["*"], unsubscribe=["*"])
    first = client.recv()
    assert first["resources"] == [] and first["removed_resources"] == []

    client.send(type_url=ADDRESS, subscribe=["/10.96.0.9"])
    vip = client.recv()
    assert [r["name"] for r in vip["resources"]] == [ECHO_SVC, ECHO_UID, REMOTE_UID]
    assert all(r["aliases"] == ["/10.96.0.9"] for r in vip["resources"]) and vip["removed_resources"] == []
    assert {r["name"]: (r["version"], r["value"], r["type_url"]) for r in vip["resources"]} == {
        n: (f"v-{n}", bodies[n], ADDRESS) for n in (ECHO_SVC, ECHO_UID, REMOTE_UID)}
    req = xds.wait_for(lambda i, r: r["resource_names_subscribe"] == ["/10.96.0.9"])
    assert req["resolved"] == {"/10.96.0.9": [ECHO_SVC, ECHO_UID, REMOTE_UID]} and not req["initial"]
    stream = xds.streams[0]
    answer = next(r for r in stream["responses"] if r["nonce"] == vip["nonce"])
    assert answer["request"] == req["seq"] and answer["aliases"][ECHO_UID] == ["/10.96.0.9"]
    assert xds.answers(req) == [answer] and xds.requests(lambda i, r: bool(r["resolved"])) == [req]
    assert xds.streams[0]["requests"][0]["resolved"] == {}  # the "*"/"*" request: no key

    # Several keys in one request, a uid asked by name (no alias), and an unknown key.
    client.send(type_url=ADDRESS, subscribe=["/127.0.0.3", CLIENT_UID, "/127.0.0.9"])
    mixed = client.recv()
    assert [(r["name"], r["aliases"]) for r in mixed["resources"]] == [(CLIENT_UID, ["/127.0.0.3"])]
    assert mixed["removed_resources"] == ["/127.0.0.9"]
    client.send(type_url=ADDRESS, response_nonce=mixed["nonce"])  # ACKs are not answered
    client.send(type_url=ADDRESS, subscribe=["/fd00::1"])
    assert [r["name"] for r in client.recv()["resources"]] == [V6_UID]
    assert stream["subscriptions"][ADDRESS] == {"wildcard": False, "names": {
        "/10.96.0.9", ECHO_SVC, ECHO_UID, REMOTE_UID, "/127.0.0.3", CLIENT_UID, "/127.0.0.9", "/fd00::1", V6_UID}}

    # Resolved names are subscribed: updates and removals reach the stream, others do not.
    changed = address_of_workload(workload(ECHO_UID, "echo-1", "shop", addresses=["127.0.0.2"],
                                           canonical_name="echo-v2", services={ECHO_SVC: {80: 8080}}))
    nonce = xds.set_resource(ADDRESS, ECHO_UID, changed)
    pushed = client.recv()
    assert pushed["nonce"] == nonce and [(r["name"], r["value"]) for r in pushed["resources"]] == [(ECHO_UID, changed)]
    assert pushed["resources"][0]["aliases"] == []
    assert xds.set_resource(ADDRESS, "t//Pod/x/other-1", bodies["t//Pod/x/other-1"]) is None
    nonce = xds.remove_resource(ADDRESS, CLIENT_UID)
    gone = client.recv()
    assert gone["nonce"] == nonce and gone["removed_resources"] == [CLIENT_UID]
    # A key answered as removed is not a resource name: a workload appearing with that IP is only
    # found by a new request, as with istiod; and istiod answers a name only when the request adds
    # it to the subscription, so the client unsubscribes the key before asking again.
    assert xds.set_resource(ADDRESS, "t//Pod/x/late-1", address_of_workload(
        workload("t//Pod/x/late-1", "late-1", "x", addresses=["127.0.0.9"]))) is None
    client.send(type_url=ADDRESS, subscribe=["/127.0.0.9"])
    xds.wait_for(lambda i, r: r.get("unanswered") and r["resource_names_subscribe"] == ["/127.0.0.9"])
    client.send(type_url=ADDRESS, unsubscribe=["/127.0.0.9"])
    client.send(type_url=ADDRESS, subscribe=["/127.0.0.9"])
    late = client.recv()
    assert [r["name"] for r in late["resources"]] == ["t//Pod/x/late-1"] and late["removed_resources"] == []
    assert xds.errors == []


def test_wildcard_and_other_types_are_not_resolved(xds, connect):
    on_demand_mesh(xds)
    client = connect()
    client.send(type_url=ADDRESS, node=NODE)
    everything = client.recv()
    assert len(everything["resources"]) == 6 and all(r["aliases"] == [] for r in everything["resources"])
    assert xds.streams[0]["requests"][0]["resolved"] is None
    client.send(type_url=AUTHORIZATION, subscribe=["/10.96.0.9"], unsubscribe=["*"])  # names, not keys
    auth = client.recv()
    assert auth["resources"] == [] and auth["removed_resources"] == ["/10.96.0.9"]


def test_response_aliases_round_trip():
    raw = encode_delta_response(ADDRESS, "n", "1", [("a", "1", b"A", None, ["/10.0.0.1", "k"]), ("b", "2", b"B")])
    resp = decode_delta_response(raw)
    assert [(r["name"], r["aliases"], r["type_url"]) for r in resp["resources"]] == [
        ("a", ["/10.0.0.1", "k"], ADDRESS), ("b", [], ADDRESS)]
    assert b"\x22\x09/10.0.0.1" in raw  # Resource.aliases = 4 (§7.5), LEN


def test_malformed_or_nodeless_requests_end_the_stream(xds, connect):
    client = connect()
    client.send_raw(b"\x12\x05ab")  # type_url length past the end
    err = client.ended()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    other = connect()
    other.send(type_url=ADDRESS)  # first request without a node
    assert other.ended().code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [i for i, _ in xds.errors] == [0, 1] and "missing node" in xds.errors[1][1]


def test_outage_refuses_streams(xds, connect):
    xds.set_outage(True)
    client = connect()
    client.send(type_url=ADDRESS, node=NODE)
    assert client.ended().code() == grpc.StatusCode.UNAVAILABLE
    assert xds.streams[0]["refused"]
    xds.set_outage(False)
    again = connect()
    again.send(type_url=ADDRESS, node=NODE)
    assert again.recv()["type_url"] == ADDRESS


def test_wait_for_times_out_with_the_record(xds):
    with pytest.raises(AssertionError, match="recorded"):
        xds.wait_for(lambda i, r: True, timeout=0.1)


def test_field_tags_match_the_compat_tables():
    # Independent of the builders' code: keys written out by hand from ISTIO_COMPAT.md §7.
    uid = b"Kubernetes//Pod/ns/p"
    wl = workload(uid.decode(), "p", "ns", addresses=["10.1.2.3"], tunnel_protocol="HBONE",
                  services={"ns/h": {80: 8080}})
    assert b"\xa2\x01" + bytes([len(uid)]) + uid in wl    # uid = 20, LEN: (20 << 3 | 2) = 0xa2 0x01
    assert wl.startswith(b"\x0a\x01p\x12\x02ns")           # name = 1, namespace = 2
    assert b"\x1a\x04\x0a\x01\x02\x03" in wl               # addresses = 3, 4 raw bytes
    assert b"\x28\x01" in wl                               # tunnel_protocol = 5, HBONE = 1
    assert b"\xb2\x01" in wl                               # services = 22
    assert address_of_service(b"x") == b"\x12\x01x"        # Address.service = 2
    pol = authorization("n", "ns", scope="WORKLOAD_SELECTOR", action="DENY")
    assert pol == b"\x0a\x01n\x12\x02ns\x18\x02\x20\x01"    # scope = 3 (2), action = 4 (DENY = 1)


def test_request_codec_round_trip_and_strictness():
    raw = encode_delta_request(type_url=ADDRESS, node=NODE, subscribe=["a"], unsubscribe=["b"],
                               initial_resource_versions={"k": "v"}, response_nonce="n",
                               error_detail="e", error_code=3)
    req = decode_delta_request(raw)
    assert req["node"]["metadata"] == NODE["metadata"] and req["initial_resource_versions"] == {"k": "v"}
    assert (req["resource_names_subscribe"], req["resource_names_unsubscribe"]) == (["a"], ["b"])
    assert (req["error_detail"], req["error_code"], req["response_nonce"]) == ("e", 3, "n")
    assert decode_delta_request(b"\x40\x01")["unknown_fields"] == [8]
    for broken in (b"\x12\x03ab", b"\x10\x01", b"\x32\x01\xff", b"\x0a\x01\x1a"):
        with pytest.raises(WireError):
            decode_delta_request(broken)
