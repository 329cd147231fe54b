"""The istiod delta-ADS double, exercised with a real grpcio client so the Swift client's tests can trust it."""
import queue
import threading

import pytest

grpc = pytest.importorskip("grpc")

from xds_double import (ADDRESS, AUTHORIZATION, METHOD, WireError, XdsDouble,  # noqa: E402
                        address_of_service, address_of_workload, authorization,
                        decode_delta_request, decode_delta_response, encode_delta_request,
                        is_ack, is_nack, service, workload)

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
