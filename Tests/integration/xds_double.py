"""A stand-in for istiod's delta ADS xDS server (ISTIO_COMPAT.md §6) for the integration tests.

It speaks the real protocol -- one bidirectional gRPC stream,
/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources, over HTTP/2 over
TLS -- and records every request so tests can assert on what the client sent. Every field number
below is taken from the tables of ISTIO_COMPAT.md §7.1, §7.2 and §7.5, not from the repository's
proto/*.proto files, so the double is an independent check of the numbers the Swift client uses.
The wire format is handled by hand (helpers shared with ca_double.py); malformed input raises
WireError rather than being guessed at.

TLS: a throwaway root (`root_pem_path`, what the client must trust: XDS_ROOT_CA) issues the
server's certificate, DNS SAN = server_name and IP SAN 127.0.0.1. The server binds 127.0.0.1 on an
ephemeral port.

Python API
----------
    xds = XdsDouble(tmpdir, server_name="istiod.istio-system.svc")
    xds.start() -> port;  xds.stop();  with XdsDouble(...) as xds: ...
    xds.port, xds.address ("127.0.0.1:PORT"), xds.root_pem_path, xds.root_pem, xds.server_name

  State, per type URL (ADDRESS, AUTHORIZATION, or any other string): name -> (version, bytes).
    xds.set_resource(type_url, name, body, version=None) -> nonce or None
        Stores the resource (version None = a fresh counter value) and pushes it to every open
        stream subscribed to it. Returns the push's nonce (one nonce shared by every stream it
        went to: nonces need only be unique within a stream), None when no stream was subscribed.
    xds.remove_resource(type_url, name) -> nonce or None   (KeyError if absent) pushes
        removed_resources=[name] the same way.
    xds.push_raw(type_url, resources=[(name, version, body)], removed=[], all_streams=False)
        -> nonce or None. Sends exactly that, state untouched (for invalid resources). A resource
        tuple may carry a 4th element, the Any's type_url (default: the response's type_url).
        Goes to every open stream that subscribed to type_url in any way (all_streams=True: to
        every open stream, e.g. to send a type the client never asked for).
    xds.resources(type_url) -> {name: (version, bytes)} copy of the state.
    xds.resolve(key, type_url=ADDRESS) -> the resource names an on-demand request for key gets
        ([] = answered as removed); see Behaviour.
    xds.set_outage(on, code=UNAVAILABLE, message=...): while on, new streams are recorded and
        ended at once with that status (istiod down, for backoff/reconnect tests).

  Records (all under one lock; copy what you keep):
    xds.streams: list of dicts, one per stream, in arrival order:
        index, peer, time, monotonic, headers (dict, lower-case names, last wins), header_list,
        authorization, clusterid, requests (list of request dicts), responses (list of response
        dicts: nonce, type_url, system_version_info, resources [(name, version)], removed,
        aliases {name: [keys]} (on-demand answers only), initial, request (seq of the request it
        answers; None for a push), raw), subscriptions {type_url: {"wildcard": bool, "names": set}},
        open (bool), refused (outage), error (why the double ended it as INVALID_ARGUMENT, else
        None), error_raw (the undecodable request's bytes), end_code / end_message (the status
        the double ended it with; None while open or when the client went away first).
    request dicts (decode_delta_request plus bookkeeping):
        node            None when absent, else {"id", "cluster", "metadata" (dict from the Struct,
                        nested values decoded; None when absent), "unknown_fields"}
        type_url, resource_names_subscribe, resource_names_unsubscribe (lists),
        initial_resource_versions (dict), response_nonce ("" when absent),
        error_detail    error_detail.message, or None when error_detail is absent
        error_code, error_details_count   the rest of the google.rpc.Status (None / 0 if absent)
        unknown_fields  field numbers not in §7.5 (kept, not an error, as protobuf does)
        stream, seq     stream index; sequence number over all streams (see mark())
        time, monotonic, raw
        initial         the first request for its type on that stream (answered with the state)
        nonce_known     response_nonce was sent on this stream for this type (None when no nonce)
        resolved        on-demand Address requests only: {requested key: [resource names it
                        resolved to]} ([] = sent back in removed_resources); else None
    xds.errors: [(stream index, message)] for every stream ended as INVALID_ARGUMENT.
    is_ack(req) / is_nack(req): has a response_nonce and no / an error_detail.
    xds.wait_for(predicate, timeout=10, since=0) -> request: blocks until some recorded request
        with seq >= since satisfies predicate(stream_index, request); AssertionError listing what
        was recorded on timeout. xds.mark() -> the seq the next request will get.
    xds.wait_for_streams(n, timeout=10) -> copy of streams once at least n were accepted.
    xds.requests(predicate=None, since=0) -> recorded requests (seq >= since, predicate(i, req)).
    xds.answers(request) -> the response dicts sent in answer to that recorded request.
    xds.stream_count: streams accepted so far (including refused ones); xds.open_stream_count.
    xds.end_streams(code=UNAVAILABLE, message=...) -> how many open streams were ended.

Behaviour (istiod's, pilot/pkg/xds/delta.go and workload.go, reduced to what ztunnel uses):
  * The first request on a stream must carry node with a non-empty id, else the stream ends
    with INVALID_ARGUMENT "missing node information". An undecodable request ends the stream with
    INVALID_ARGUMENT too; both are recorded in xds.errors (tests assert it stays empty).
  * The first request for a type on a stream (nonce or not, unless it is a NACK) subscribes the
    stream. Subscription follows istiod: names = subscribe + initial_resource_versions keys -
    unsubscribe; wildcard when "*" survives that or subscribe is empty. So the on-demand
    "subscribe ['*'] + unsubscribe ['*']" subscribes to nothing.
  * Any request without nonce that subscribes (the initial one, or a later one adding names) is
    answered by exactly one response, even an empty one: wildcard -> every resource of the type;
    otherwise the requested names that exist. removed_resources = the requested names (subscribe
    and initial_resource_versions keys, minus "*") that do not exist -- so a reconnecting client
    claiming a resource that went away is told to drop it.
  * On demand (XDS_ON_DEMAND, §6.3): for a non-wildcard Address subscription each requested key
    (subscribe + initial_resource_versions keys) is resolved as istiod's ambient index does:
    a workload uid -> that workload; "<network>/<IP>" -> the workloads with that IP on that
    network, else the service with that VIP; "<namespace>/<hostname>" -> that service. A service
    comes with the workloads whose `services` map names it (its endpoints). Each resource is
    sent once under its real name, Resource.aliases = the other keys that found it; a key that
    finds nothing is sent in removed_resources. One response per request, as above. The stream
    is then subscribed to the keys and to every name it was sent, so later set_resource /
    remove_resource of those names reach it. Not modelled: istiod's extra on-demand pushes
    (every workload on the proxy's NODE_NAME; a subscribed service's endpoints on update).
    Wildcard subscriptions and other types are unaffected.
  * ACKs and NACKs are recorded and never answered; stale nonces are not checked (see
    nonce_known). An empty type_url is recorded and ignored.
  * Pushes (set_resource/remove_resource) go to wildcard subscribers and to streams subscribed to
    that name; a non-wildcard stream is subscribed to what it was sent, as istiod does.
  * When the client half-closes, the stream ends with OK (istiod returns on EOF).
  * Every response: unique nonce, system_version_info = the state's generation counter,
    type_url, Resource{version=1, resource=2 Any{type_url=1, value=2}, name=3}.

describe_address(bytes) -> what a lookup reads from an Address (uid/IPs/network/services of a
    workload, key/VIPs of a service), None when undecodable.

Message builders (bytes; proto3 defaults are left out as a real encoder does; enums accept the
§7 name or a raw int, so unknown values can be sent; IPs accept "10.0.0.1"/"fd00::1" strings or
raw bytes, which are sent as given even when not 4/16 long):
    workload(...)  -> istio.workload.Workload      address_of_workload(b) -> Address{workload=1}
    service(...)   -> istio.workload.Service       address_of_service(b)  -> Address{service=2}
    gateway(...)   -> GatewayAddress               network_address(ip, network="", length=None)
    authorization(...) -> istio.security.Authorization, with auth_group/auth_rules/auth_match/
    string_match/auth_address helpers. See each builder's docstring for the fields it covers.
Client side, for the self-test and for tests that poke the double directly:
    encode_delta_request(...), decode_delta_request(b), encode_delta_response(...),
    decode_delta_response(b).
"""
import ipaddress
import queue
import threading
import time

import grpc

from ca_double import (WIRE_LEN, WIRE_VARINT, TLSGrpcServer, WireError, _expect, _key, _len_field, _raw,
                       _utf8, _varint, decode_struct, encode_struct, iter_fields)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = f"/{SERVICE}/DeltaAggregatedResources"
ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION = "type.googleapis.com/istio.security.Authorization"
WORKLOAD = "type.googleapis.com/istio.workload.Workload"  # defined by istiod; ztunnel does not subscribe

__all__ = [
    "SERVICE", "METHOD", "ADDRESS", "AUTHORIZATION", "WORKLOAD", "WireError", "XdsDouble",
    "is_ack", "is_nack",
    "encode_delta_request", "decode_delta_request", "encode_delta_response", "decode_delta_response",
    "workload", "service", "gateway", "network_address", "address_of_workload", "address_of_service",
    "describe_address",
    "authorization", "auth_group", "auth_rules", "auth_match", "string_match", "auth_address",
    "TUNNEL_PROTOCOL", "WORKLOAD_STATUS", "WORKLOAD_TYPE", "APP_PROTOCOL", "NETWORK_MODE",
    "IP_FAMILIES", "VISIBILITY", "LB_SCOPE", "LB_MODE", "LB_HEALTH_POLICY",
    "APPLICATION_TUNNEL_PROTOCOL", "AUTH_SCOPE", "AUTH_ACTION",
]

# ---------------------------------------------------------------------------------------------
# Enums, §7.1 and §7.2.

TUNNEL_PROTOCOL = {"NONE": 0, "HBONE": 1, "LEGACY_ISTIO_MTLS": 2}
WORKLOAD_STATUS = {"HEALTHY": 0, "UNHEALTHY": 1}
WORKLOAD_TYPE = {"DEPLOYMENT": 0, "CRONJOB": 1, "POD": 2, "JOB": 3}
APP_PROTOCOL = {"UNKNOWN": 0, "HTTP11": 1, "HTTP2": 2, "GRPC": 3, "TCP": 4, "TLS": 5}
NETWORK_MODE = {"STANDARD": 0, "HOST_NETWORK": 1}
IP_FAMILIES = {"AUTOMATIC": 0, "IPV4_ONLY": 1, "IPV6_ONLY": 2, "DUAL": 3}
VISIBILITY = {"PUBLIC": 0, "NAMESPACE": 1}
LB_SCOPE = {"UNSPECIFIED_SCOPE": 0, "REGION": 1, "ZONE": 2, "SUBZONE": 3, "NODE": 4, "CLUSTER": 5,
            "NETWORK": 6}
LB_MODE = {"UNSPECIFIED_MODE": 0, "STRICT": 1, "FAILOVER": 2, "PASSTHROUGH": 3}
LB_HEALTH_POLICY = {"ONLY_HEALTHY": 0, "ALLOW_ALL": 1}
APPLICATION_TUNNEL_PROTOCOL = {"NONE": 0, "PROXY": 1}
AUTH_SCOPE = {"GLOBAL": 0, "NAMESPACE": 1, "WORKLOAD_SELECTOR": 2}
AUTH_ACTION = {"ALLOW": 0, "DENY": 1}


def _enum(table, value):
    if isinstance(value, bool):
        raise TypeError("an enum is a name or an int, not a bool")
    if isinstance(value, int):
        return value
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"{value!r} is not one of {sorted(table)}") from None


# ---------------------------------------------------------------------------------------------
# Encoding primitives (proto3: scalars at their default value are not written).

def _str(number, value):
    return _len_field(number, value) if value else b""


def _bytes(number, value):
    return _len_field(number, bytes(value)) if value else b""


def _uint(number, value):
    if value < 0:
        raise ValueError(f"field {number} is unsigned, got {value}")
    return _key(number, WIRE_VARINT) + _varint(value) if value else b""


def _bool(number, value):
    return _key(number, WIRE_VARINT) + b"\x01" if value else b""


def _msg(number, payload):
    """A message-typed field: written whenever given (presence matters), even when empty."""
    return b"" if payload is None else _len_field(number, payload)


def _packed_uints(number, values):
    values = list(values)
    if not values:
        return b""
    if any(v < 0 for v in values):
        raise ValueError(f"field {number} is unsigned")
    return _len_field(number, b"".join(_varint(v) for v in values))


def _ip(value):
    """An IP as raw network-order bytes; bytes pass through unchanged (even a wrong length)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return ipaddress.ip_address(value).packed


# ---------------------------------------------------------------------------------------------
# istio.workload builders, §7.1.

def network_address(ip, network="", length=None):
    """NetworkAddress: network=1, address=2 (bytes), length=3 (optional uint32: written whenever
    not None, even 0, since proto3 `optional` has explicit presence)."""
    out = _str(1, network) + _bytes(2, _ip(ip))
    if length is not None:
        out += _key(3, WIRE_VARINT) + _varint(length)
    return out


def gateway(address=None, hostname=None, hbone_mtls_port=15008, network=""):
    """GatewayAddress: destination oneof hostname=1 (NamespacedHostname{namespace=1, hostname=2})
    or address=2 (NetworkAddress), hbone_mtls_port=3.

    hostname is "namespace/hostname" or a (namespace, hostname) tuple. With neither address nor
    hostname the destination is left unset (which ztunnel rejects)."""
    if address is not None and hostname is not None:
        raise ValueError("destination is a oneof: give address or hostname, not both")
    out = b""
    if hostname is not None:
        namespace, host = hostname.split("/", 1) if isinstance(hostname, str) else hostname
        out += _msg(1, _str(1, namespace) + _str(2, host))
    if address is not None:
        out += _msg(2, network_address(address, network))
    return out + _uint(3, hbone_mtls_port)


def _gateway_arg(value):
    """None, pre-built GatewayAddress bytes, or an IP string (address destination, port 15008)."""
    if value is None or isinstance(value, (bytes, bytearray)):
        return value
    return gateway(address=value)


def _port(spec):
    """Port{service_port=1, target_port=2, app_protocol=3} from (service, target[, app_protocol])."""
    service_port, target_port, *rest = spec
    app = _enum(APP_PROTOCOL, rest[0]) if rest else 0
    return _uint(1, service_port) + _uint(2, target_port) + _uint(3, app)


def workload(uid, name, namespace, addresses=("10.0.0.1",), network="", service_account="default",
             tunnel_protocol="HBONE", node="", trust_domain="cluster.local", services=None,
             status_healthy=True, waypoint=None, canonical_name="", canonical_revision="",
             cluster_id="", hostname="", workload_type="DEPLOYMENT", workload_name="",
             native_tunnel=False, application_tunnel=None, authorization_policies=(),
             network_gateway=None, locality=None, network_mode="STANDARD", capacity=None):
    """istio.workload.Workload (xDS name = uid). Covers, by field number:
      uid=20, name=1, namespace=2, addresses=3 (repeated bytes; IP strings or raw bytes),
      hostname=21, network=4, tunnel_protocol=5 ("NONE"/"HBONE"/"LEGACY_ISTIO_MTLS" or int),
      trust_domain=6, service_account=7, waypoint=8 (GatewayAddress bytes or an IP string),
      network_gateway=19 (same), node=9, canonical_name=10, canonical_revision=11,
      workload_type=12, workload_name=13, native_tunnel=14,
      application_tunnel=23 ((protocol, port) -> ApplicationTunnel{protocol=1, port=2}),
      services=22 (map "ns/host" -> PortList{ports=1}; value is {service_port: target_port} or a
      list of (service_port, target_port[, app_protocol]) tuples),
      authorization_policies=16, status=17 (status_healthy False -> UNHEALTHY=1),
      cluster_id=18, locality=24 ((region, zone, subzone) -> Locality{1, 2, 3}),
      network_mode=25, capacity=27 (google.protobuf.UInt32Value{value=1}; None leaves it out).
    Not covered: extensions=26 (ignored by ztunnel)."""
    out = _str(1, name) + _str(2, namespace)
    for a in addresses:
        # repeated bytes: every element is written, an empty one included
        out += _len_field(3, _ip(a))
    out += _str(4, network) + _uint(5, _enum(TUNNEL_PROTOCOL, tunnel_protocol))
    out += _str(6, trust_domain) + _str(7, service_account)
    out += _msg(8, _gateway_arg(waypoint))
    out += _str(9, node) + _str(10, canonical_name) + _str(11, canonical_revision)
    out += _uint(12, _enum(WORKLOAD_TYPE, workload_type)) + _str(13, workload_name)
    out += _bool(14, native_tunnel)
    for policy in authorization_policies:
        out += _len_field(16, policy)
    out += _uint(17, 0 if status_healthy else WORKLOAD_STATUS["UNHEALTHY"])
    out += _str(18, cluster_id)
    out += _msg(19, _gateway_arg(network_gateway))
    out += _str(20, uid) + _str(21, hostname)
    for key, ports in (services or {}).items():
        specs = ports.items() if isinstance(ports, dict) else ports
        port_list = b"".join(_len_field(1, _port(p)) for p in specs)
        out += _len_field(22, _len_field(1, key) + _len_field(2, port_list))
    if application_tunnel is not None:
        protocol, port = application_tunnel
        out += _msg(23, _uint(1, _enum(APPLICATION_TUNNEL_PROTOCOL, protocol)) + _uint(2, port))
    if locality is not None:
        region, zone, subzone = (tuple(locality) + ("", "", ""))[:3]
        out += _msg(24, _str(1, region) + _str(2, zone) + _str(3, subzone))
    out += _uint(25, _enum(NETWORK_MODE, network_mode))
    if capacity is not None:
        out += _msg(27, _uint(1, capacity))
    return out


def service(name, namespace, hostname, addresses=(("", "10.96.0.10"),), ports=((80, 8080),),
            waypoint=None, subject_alt_names=(), load_balancing=None, ip_families="AUTOMATIC",
            canonical=False, visibility="PUBLIC", weighted_waypoints=()):
    """istio.workload.Service (xDS name "namespace/hostname"). Covers, by field number:
      name=1, namespace=2, hostname=3,
      addresses=4 (NetworkAddress; each item "ip", (network, ip) or (network, ip, prefix_length)
      -- a length makes it a CIDR VIP; raw bytes allowed for ip),
      ports=5 ((service_port, target_port[, app_protocol]); target 0 = named port),
      subject_alt_names=6, waypoint=7 (GatewayAddress bytes or an IP string),
      load_balancing=8 (dict routing_preference=[scope...], mode=..., health_policy=... ->
      LoadBalancing{routing_preference=1 packed, mode=2, health_policy=3}),
      ip_families=9, canonical=11, weighted_waypoints=13 ((gateway, weight) ->
      WeightedWaypoint{destination=1, weight=2}), visibility=14 ("PUBLIC"/"NAMESPACE" or int).
    Not covered: extensions=10, ingress_use_waypoint=12 (ignored by ztunnel)."""
    out = _str(1, name) + _str(2, namespace) + _str(3, hostname)
    for a in addresses:
        if isinstance(a, (str, bytes, bytearray)):
            a = ("", a)
        out += _len_field(4, network_address(a[1], a[0], a[2] if len(a) > 2 else None))
    for p in ports:
        out += _len_field(5, _port(p))
    for san in subject_alt_names:
        out += _len_field(6, san)
    out += _msg(7, _gateway_arg(waypoint))
    if load_balancing is not None:
        lb = _packed_uints(1, [_enum(LB_SCOPE, s) for s in load_balancing.get("routing_preference", ())])
        lb += _uint(2, _enum(LB_MODE, load_balancing.get("mode", 0)))
        lb += _uint(3, _enum(LB_HEALTH_POLICY, load_balancing.get("health_policy", 0)))
        out += _msg(8, lb)
    out += _uint(9, _enum(IP_FAMILIES, ip_families)) + _bool(11, canonical)
    for destination, weight in weighted_waypoints:
        out += _len_field(13, _msg(1, _gateway_arg(destination)) + _uint(2, weight))
    out += _uint(14, _enum(VISIBILITY, visibility))
    return out


def address_of_workload(workload_bytes):
    """istio.workload.Address with the oneof set to workload (field 1)."""
    return _len_field(1, workload_bytes)


def address_of_service(service_bytes):
    """istio.workload.Address with the oneof set to service (field 2)."""
    return _len_field(2, service_bytes)


def _ip_text(raw):
    """Canonical text of 4/16 raw bytes (as istiod's netip.Addr.String()), None for other lengths."""
    return str(ipaddress.ip_address(raw)) if len(raw) in (4, 16) else None


def describe_address(body):
    """What an on-demand lookup needs from an istio.workload.Address, read with the §7.1 numbers:
      {"kind": "workload", "uid", "network", "ips": [canonical IP text], "services": ["ns/host"]}
      {"kind": "service", "key": "namespace/hostname", "vips": [(network, canonical IP text)]}
    None when body is not a decodable Address with the oneof set (opaque test bodies, broken
    resources): such a resource is only ever found by its own name. IPs of a length other than
    4/16 are left out."""
    try:
        kind, inner = None, None
        for number, wire, value in iter_fields(body):
            if number in (1, 2) and wire == WIRE_LEN:
                kind, inner = ("workload" if number == 1 else "service"), value  # oneof: last wins
        if kind == "workload":
            out = {"kind": kind, "uid": "", "network": "", "ips": [], "services": []}
            for number, wire, value in iter_fields(inner):
                if wire != WIRE_LEN:
                    continue
                if number == 20:
                    out["uid"] = _utf8(number, value)
                elif number == 4:
                    out["network"] = _utf8(number, value)
                elif number == 3 and _ip_text(value) is not None:
                    out["ips"].append(_ip_text(value))
                elif number == 22:  # map<string, PortList> entry {key=1, value=2}
                    for n, w, v in iter_fields(value):
                        if n == 1 and w == WIRE_LEN:
                            out["services"].append(_utf8(n, v))
            return out
        if kind == "service":
            namespace, hostname, vips = "", "", []
            for number, wire, value in iter_fields(inner):
                if wire != WIRE_LEN:
                    continue
                if number == 2:
                    namespace = _utf8(number, value)
                elif number == 3:
                    hostname = _utf8(number, value)
                elif number == 4:  # NetworkAddress{network=1, address=2, length=3}
                    network, ip = "", None
                    for n, w, v in iter_fields(value):
                        if n == 1 and w == WIRE_LEN:
                            network = _utf8(n, v)
                        elif n == 2 and w == WIRE_LEN:
                            ip = _ip_text(v)
                    if ip is not None:
                        vips.append((network, ip))
            return {"kind": kind, "key": f"{namespace}/{hostname}", "vips": vips}
    except WireError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# istio.security builders, §7.2. Canonical names Group -> Rules -> Match; ztunnel's copy calls
# them Rule -> Clause -> Match. Same numbers.

def string_match(spec):
    """StringMatch from "x" (exact=1), {"exact": x} / {"prefix": x}=2 / {"suffix": x}=3 /
    {"presence": True}=4 (google.protobuf.Empty), or {} (no oneof: ztunnel drops it)."""
    if isinstance(spec, str):
        spec = {"exact": spec}
    if len(spec) > 1:
        raise ValueError("match_type is a oneof: one key at most")
    out = b""
    for kind, value in spec.items():
        number = {"exact": 1, "prefix": 2, "suffix": 3, "presence": 4}[kind]
        # a oneof member is written even at its default value: that is what sets the oneof
        out += _len_field(number, b"" if kind == "presence" else value)
    return out


def auth_address(spec):
    """istio.security.Address{address=1 bytes, length=2 uint32} from "10.0.0.0/8", "10.0.0.1"
    (length = full width, as istiod sends), or (raw bytes, length)."""
    if isinstance(spec, str):
        net = ipaddress.ip_network(spec, strict=False)
        raw, length = net.network_address.packed, net.prefixlen
    else:
        raw, length = spec
    return _bytes(1, raw) + _uint(2, length)


def _service_account_match(spec):
    """ServiceAccountMatch{namespace=1, serviceAccount=2} from (ns, sa) or {"namespace", "serviceAccount"}."""
    if isinstance(spec, dict):
        spec = (spec.get("namespace", ""), spec.get("serviceAccount", ""))
    namespace, account = spec
    return _str(1, namespace) + _str(2, account)


_MATCH_FIELDS = {
    "namespaces": (1, string_match), "not_namespaces": (2, string_match),
    "principals": (3, string_match), "not_principals": (4, string_match),
    "source_ips": (5, auth_address), "not_source_ips": (6, auth_address),
    "destination_ips": (7, auth_address), "not_destination_ips": (8, auth_address),
    "destination_ports": (9, None), "not_destination_ports": (10, None),
    "service_accounts": (11, _service_account_match), "not_service_accounts": (12, _service_account_match),
}


def auth_match(**fields):
    """Match. Keyword = field: namespaces=1, not_namespaces=2, principals=3, not_principals=4
    (lists of string_match specs), source_ips=5, not_source_ips=6, destination_ips=7,
    not_destination_ips=8 (lists of auth_address specs), destination_ports=9,
    not_destination_ports=10 (lists of ints, packed), service_accounts=11,
    not_service_accounts=12 ((namespace, serviceAccount) pairs). Not covered: extensions=13."""
    out = b""
    for key in sorted(fields, key=lambda k: _MATCH_FIELDS[k][0]):
        number, encode = _MATCH_FIELDS[key]
        if encode is None:
            out += _packed_uints(number, fields[key])
        else:
            out += b"".join(_len_field(number, encode(v)) for v in fields[key])
    return out


def auth_rules(*matches):
    """Rules (ztunnel: Clause){matches=2}; matches are OR-ed. Each is Match bytes or a dict of
    auth_match keywords."""
    return b"".join(_len_field(2, m if isinstance(m, (bytes, bytearray)) else auth_match(**m))
                    for m in matches)


def auth_group(*rules):
    """Group (ztunnel: Rule){rules=1}; rules are AND-ed. Each is Rules bytes or a list of matches."""
    return b"".join(_len_field(1, r if isinstance(r, (bytes, bytearray)) else auth_rules(*r))
                    for r in rules)


def authorization(name, namespace, scope="WORKLOAD_SELECTOR", action="ALLOW", groups=(),
                  dry_run=False):
    """istio.security.Authorization (xDS name "namespace/name"): name=1, namespace=2, scope=3
    (GLOBAL=0, NAMESPACE=1, WORKLOAD_SELECTOR=2), action=4 (ALLOW=0, DENY=1), groups=5 (OR-ed),
    dry_run=6. Not covered: extensions=7.

    groups: each is Group bytes or a list of rules; a rule is Rules bytes or a list of matches;
    a match is Match bytes or a dict of auth_match keywords. E.g. allow one principal on port 80:
        authorization("p", "ns", groups=[[[{"principals": ["spiffe://cluster.local/ns/a/sa/b"]}],
                                          [{"destination_ports": [80]}]]])"""
    out = _str(1, name) + _str(2, namespace)
    out += _uint(3, _enum(AUTH_SCOPE, scope)) + _uint(4, _enum(AUTH_ACTION, action))
    for g in groups:
        out += _len_field(5, g if isinstance(g, (bytes, bytearray)) else auth_group(*g))
    return out + _bool(6, dry_run)


# ---------------------------------------------------------------------------------------------
# envoy.service.discovery.v3, §7.5.

def _decode_status(buf):
    """google.rpc.Status{code=1 int32, message=2, details=3 repeated Any}."""
    code, message, details = 0, "", 0
    for number, wire, value in iter_fields(buf):
        if number == 1:
            _expect(number, wire, WIRE_VARINT)
            code = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 2:
            _expect(number, wire, WIRE_LEN)
            message = _utf8(number, value)
        elif number == 3:
            _expect(number, wire, WIRE_LEN)
            details += 1
    return code, message, details


def _decode_node(buf, node):
    """config.core.v3.Node: id=1, cluster=2, metadata=3 (Struct). Others are listed by number."""
    for number, wire, value in iter_fields(buf):
        if number in (1, 2):
            _expect(number, wire, WIRE_LEN)
            node["id" if number == 1 else "cluster"] = _utf8(number, value)
        elif number == 3:
            _expect(number, wire, WIRE_LEN)
            node["metadata"] = {**(node["metadata"] or {}), **decode_struct(value)}
        else:
            node["unknown_fields"].append(number)
    return node


def decode_delta_request(buf):
    """DeltaDiscoveryRequest -> dict; see the module docstring for the keys. WireError if malformed."""
    req = {"node": None, "type_url": "", "resource_names_subscribe": [],
           "resource_names_unsubscribe": [], "initial_resource_versions": {},
           "response_nonce": "", "error_detail": None, "error_code": None,
           "error_details_count": 0, "unknown_fields": []}
    for number, wire, value in iter_fields(buf):
        if number == 1:
            _expect(number, wire, WIRE_LEN)
            # a message field seen twice is merged, per the protobuf spec
            req["node"] = _decode_node(value, req["node"] or
                                       {"id": "", "cluster": "", "metadata": None, "unknown_fields": []})
        elif number in (2, 6):
            _expect(number, wire, WIRE_LEN)
            req["type_url" if number == 2 else "response_nonce"] = _utf8(number, value)
        elif number in (3, 4):
            _expect(number, wire, WIRE_LEN)
            key = "resource_names_subscribe" if number == 3 else "resource_names_unsubscribe"
            req[key].append(_utf8(number, value))
        elif number == 5:
            _expect(number, wire, WIRE_LEN)
            entry_key, entry_value = "", ""
            for n, w, v in iter_fields(value):
                if n in (1, 2):
                    _expect(n, w, WIRE_LEN)
                    if n == 1:
                        entry_key = _utf8(n, v)
                    else:
                        entry_value = _utf8(n, v)
            req["initial_resource_versions"][entry_key] = entry_value  # map: last wins
        elif number == 7:
            _expect(number, wire, WIRE_LEN)
            code, message, details = _decode_status(value)
            req["error_code"], req["error_detail"], req["error_details_count"] = code, message, details
        else:
            req["unknown_fields"].append(number)
    return req


def encode_delta_request(type_url="", node=None, subscribe=(), unsubscribe=(),
                         initial_resource_versions=None, response_nonce="", error_detail=None,
                         error_code=0):
    """DeltaDiscoveryRequest bytes (client side). node: {"id", "cluster", "metadata": dict}.
    error_detail: the Status message (None leaves error_detail out)."""
    out = b""
    if node is not None:
        n = _str(1, node.get("id", "")) + _str(2, node.get("cluster", ""))
        if node.get("metadata") is not None:
            n += _len_field(3, encode_struct(node["metadata"]))
        out += _len_field(1, n)
    out += _str(2, type_url)
    out += b"".join(_len_field(3, s) for s in subscribe)
    out += b"".join(_len_field(4, s) for s in unsubscribe)
    for k, v in (initial_resource_versions or {}).items():
        out += _len_field(5, _str(1, k) + _str(2, v))
    out += _str(6, response_nonce)
    if error_detail is not None:
        code = _key(1, WIRE_VARINT) + _varint(error_code) if error_code else b""
        out += _len_field(7, code + _str(2, error_detail))
    return out


def encode_delta_response(type_url, nonce, system_version_info="", resources=(), removed=()):
    """DeltaDiscoveryResponse{system_version_info=1, resources=2, type_url=4, nonce=5,
    removed_resources=6}. resources: (name, version, body[, any_type_url[, aliases]]) ->
    Resource{version=1, resource=2 Any{type_url=1, value=2}, name=3, aliases=4 (repeated)}.
    any_type_url None = the response's type_url."""
    out = _str(1, system_version_info)
    for item in resources:
        name, version, body = item[:3]
        any_type = item[3] if len(item) > 3 and item[3] is not None else type_url
        aliases = item[4] if len(item) > 4 else ()
        resource = _str(1, version) + _len_field(2, _str(1, any_type) + _bytes(2, body)) + _str(3, name)
        resource += b"".join(_len_field(4, a) for a in aliases)
        out += _len_field(2, resource)
    out += _str(4, type_url) + _str(5, nonce)
    return out + b"".join(_len_field(6, r) for r in removed)


def decode_delta_response(buf):
    """DeltaDiscoveryResponse -> dict(system_version_info, type_url, nonce, removed_resources,
    resources=[{name, version, type_url, value, aliases}], unknown_fields)."""
    resp = {"system_version_info": "", "resources": [], "type_url": "", "nonce": "",
            "removed_resources": [], "unknown_fields": []}
    for number, wire, value in iter_fields(buf):
        if number in (1, 4, 5, 6):
            _expect(number, wire, WIRE_LEN)
            text = _utf8(number, value)
            if number == 6:
                resp["removed_resources"].append(text)
            else:
                resp[{1: "system_version_info", 4: "type_url", 5: "nonce"}[number]] = text
        elif number == 2:
            _expect(number, wire, WIRE_LEN)
            res = {"name": "", "version": "", "type_url": None, "value": None, "aliases": []}
            for n, w, v in iter_fields(value):
                if n in (1, 3):
                    _expect(n, w, WIRE_LEN)
                    res["version" if n == 1 else "name"] = _utf8(n, v)
                elif n == 4:
                    _expect(n, w, WIRE_LEN)
                    res["aliases"].append(_utf8(n, v))
                elif n == 2:
                    _expect(n, w, WIRE_LEN)
                    res["type_url"], res["value"] = "", b""
                    for an, aw, av in iter_fields(v):
                        _expect(an, aw, WIRE_LEN)
                        if an == 1:
                            res["type_url"] = _utf8(an, av)
                        elif an == 2:
                            res["value"] = av
            resp["resources"].append(res)
        else:
            resp["unknown_fields"].append(number)
    return resp


def is_ack(req):
    return bool(req["response_nonce"]) and req["error_detail"] is None


def is_nack(req):
    return bool(req["response_nonce"]) and req["error_detail"] is not None


# ---------------------------------------------------------------------------------------------

class _End:
    def __init__(self, code, message):
        self.code, self.message = code, message


_GONE = object()  # the RPC terminated (client went away, server stopping)


class XdsDouble(TLSGrpcServer):
    """istiod's delta ADS on 127.0.0.1 over TLS. See the module docstring."""

    def __init__(self, tmpdir, server_name="istiod.istio-system.svc", host="127.0.0.1"):
        # Each open stream holds a worker for its life; reconnect tests open a handful at most.
        super().__init__(tmpdir, server_name, "xds-double server TLS root", "xds-double-tls-root.pem", workers=32, host=host)
        self.streams = []
        self.errors = []
        self._cond = threading.Condition()
        self._state = {}
        self._queues = {}  # stream index -> queue.Queue of bytes / _End / _GONE, while open
        self._generation = 0
        self._nonces = 0
        self._seq = 0
        self._outage = None

    def _handlers(self):
        return SERVICE, {"DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            self._delta, request_deserializer=_raw, response_serializer=_raw)}

    def _stopping(self):
        with self._cond:
            for q in self._queues.values():
                q.put(_GONE)

    # -- state and pushes ---------------------------------------------------------------------

    def resources(self, type_url):
        with self._cond:
            return dict(self._state.get(type_url, {}))

    def set_resource(self, type_url, name, body, version=None):
        with self._cond:
            self._generation += 1
            if version is None:
                version = str(self._generation)
            version, body = str(version), bytes(body)
            self._state.setdefault(type_url, {})[name] = (version, body)
            return self._push(type_url, [(name, version, body)], [], lambda s: self._wants(s, type_url, name))

    def remove_resource(self, type_url, name):
        with self._cond:
            del self._state[type_url][name]
            self._generation += 1
            return self._push(type_url, [], [name], lambda s: self._wants(s, type_url, name))

    def push_raw(self, type_url, resources=(), removed=(), all_streams=False):
        with self._cond:
            return self._push(type_url, list(resources), list(removed),
                              lambda s: all_streams or type_url in s["subscriptions"])

    def set_outage(self, on, code=grpc.StatusCode.UNAVAILABLE,
                   message="xds-double outage switched on by the test"):
        with self._cond:
            self._outage = _End(code, message) if on else None

    def end_streams(self, code=grpc.StatusCode.UNAVAILABLE, message="xds-double ended the stream"):
        with self._cond:
            for q in self._queues.values():
                q.put(_End(code, message))
            return len(self._queues)

    @staticmethod
    def _wants(stream, type_url, name):
        sub = stream["subscriptions"].get(type_url)
        return sub is not None and (sub["wildcard"] or name in sub["names"])

    def _push(self, type_url, resources, removed, select):
        """Under the lock: one response to every open stream `select` picks; returns the nonce."""
        nonce = None
        for index, q in self._queues.items():
            stream = self.streams[index]
            if not select(stream):
                continue
            nonce = nonce or self._next_nonce()
            self._send(stream, q, type_url, nonce, resources, removed, initial=False, request_seq=None)
            sub = stream["subscriptions"].get(type_url)
            if sub is not None and not sub["wildcard"]:
                sub["names"].update(r[0] for r in resources)
        return nonce

    def _next_nonce(self):
        self._nonces += 1
        return f"xds-double-{self._nonces}"

    def _send(self, stream, q, type_url, nonce, resources, removed, initial, request_seq):
        raw = encode_delta_response(type_url, nonce, str(self._generation), resources, removed)
        stream["responses"].append({
            "nonce": nonce, "type_url": type_url, "system_version_info": str(self._generation),
            "resources": [(r[0], r[1]) for r in resources], "removed": list(removed),
            "aliases": {r[0]: list(r[4]) for r in resources if len(r) > 4 and r[4]},
            "initial": initial, "request": request_seq, "time": time.time(), "raw": raw})
        q.put(raw)

    # -- on-demand lookups --------------------------------------------------------------------

    def resolve(self, key, type_url=ADDRESS):
        """The resource names an on-demand subscription to `key` is answered with ([] = the key
        goes into removed_resources); see _lookup."""
        with self._cond:
            return self._lookup(self._state.get(type_url, {}), key)

    @staticmethod
    def _lookup(state, key):
        """istiod's ambient-index Lookup (pilot/pkg/serviceregistry/kube/controller/ambient):
          1. a workload uid -> that workload (so does any name the double cannot decode);
          2. "<network>/<IP>" -> every workload with that IP on that network, if any;
          3. else a service, by its name "<namespace>/<hostname>" or by a VIP "<network>/<IP>"
             (the first by resource name when several share it) -> the service followed by the
             workloads whose `services` map names it (istiod sends them: ztunnel needs them as
             endpoints);
          4. nothing -> [] (the key is answered in removed_resources)."""
        infos = {name: describe_address(body) for name, (_, body) in state.items()}
        workloads = sorted(n for n, i in infos.items() if i is not None and i["kind"] == "workload")

        def with_endpoints(name):
            return [name] + [w for w in workloads if infos[name]["key"] in infos[w]["services"]]

        info = infos.get(key)
        if key in state and (info is None or info["kind"] == "workload"):
            return [key]
        if key in state:
            return with_endpoints(key)
        network, sep, ip = key.partition("/")
        try:
            ip = str(ipaddress.ip_address(ip)) if sep else None
        except ValueError:
            ip = None
        if ip is None:
            return []
        hits = [w for w in workloads if infos[w]["network"] == network and ip in infos[w]["ips"]]
        if hits:
            return hits
        for name in sorted(state):
            if infos[name] is not None and infos[name]["kind"] == "service" and (network, ip) in infos[name]["vips"]:
                return with_endpoints(name)
        return []

    # -- records ------------------------------------------------------------------------------

    @property
    def stream_count(self):
        with self._cond:
            return len(self.streams)

    @property
    def open_stream_count(self):
        with self._cond:
            return len(self._queues)

    def mark(self):
        with self._cond:
            return self._seq

    def wait_for(self, predicate, timeout=10, since=0):
        found = []

        def check():
            for stream in self.streams:
                for req in stream["requests"]:
                    if req["seq"] >= since and predicate(stream["index"], req):
                        found.append(req)
                        return True
            return False

        with self._cond:
            if not self._cond.wait_for(check, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for an xDS request; "
                                     f"recorded:\n{self._describe()}")
            return found[0]

    def requests(self, predicate=None, since=0):
        """The recorded requests with seq >= since (that satisfy predicate(stream_index, request)
        when given), in arrival order."""
        with self._cond:
            return [req for stream in self.streams for req in stream["requests"]
                    if req["seq"] >= since and (predicate is None or predicate(stream["index"], req))]

    def answers(self, request):
        """The responses the double sent to answer `request` (a recorded request dict): one for a
        request that subscribes, none for an ACK, a NACK or an unsubscribe-only request."""
        with self._cond:
            return [r for r in self.streams[request["stream"]]["responses"] if r["request"] == request["seq"]]

    def wait_for_streams(self, n, timeout=10):
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.streams) >= n, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {n} xDS streams; "
                                     f"recorded:\n{self._describe()}")
            return list(self.streams)

    def _describe(self):
        lines = []
        for s in self.streams:
            lines.append(f"stream {s['index']}: open={s['open']} refused={s['refused']} "
                         f"error={s['error']} end={s['end_code']} {s['end_message'] or ''}")
            for r in s["requests"]:
                lines.append(f"  #{r['seq']} type={r['type_url']} nonce={r['response_nonce']!r} "
                             f"sub={r['resource_names_subscribe']} unsub={r['resource_names_unsubscribe']} "
                             f"initial_versions={len(r['initial_resource_versions'])} "
                             f"error_detail={r['error_detail']!r} node={'yes' if r['node'] else 'no'}")
            for r in s["responses"]:
                lines.append(f"  -> nonce={r['nonce']} type={r['type_url']} "
                             f"resources={[n for n, _ in r['resources']]} removed={r['removed']}")
        return "\n".join(lines) or "(nothing)"

    # -- the RPC ------------------------------------------------------------------------------

    def _delta(self, request_iterator, context):
        header_list = [(k, v) for k, v in context.invocation_metadata()]
        headers = dict(header_list)
        q = queue.Queue()
        with self._cond:
            index = len(self.streams)
            stream = {
                "index": index, "peer": context.peer(), "time": time.time(),
                "monotonic": time.monotonic(), "headers": headers, "header_list": header_list,
                "authorization": headers.get("authorization"), "clusterid": headers.get("clusterid"),
                "requests": [], "responses": [], "subscriptions": {}, "open": True,
                "refused": self._outage is not None, "error": None, "error_raw": None,
                "end_code": None, "end_message": None,
            }
            self.streams.append(stream)
            outage = self._outage
            if outage is None:
                self._queues[index] = q
            else:
                stream["open"] = False
                stream["end_code"], stream["end_message"] = outage.code, outage.message
            self._cond.notify_all()
        if outage is not None:
            context.abort(outage.code, outage.message)
        if not context.add_callback(lambda: q.put(_GONE)):
            q.put(_GONE)
        threading.Thread(target=self._read, args=(stream, q, request_iterator),
                         name=f"xds-double-read-{index}", daemon=True).start()
        return self._respond(stream, q, context)

    def _respond(self, stream, q, context):
        try:
            while True:
                item = q.get()
                if item is _GONE:
                    return
                if isinstance(item, _End):
                    with self._cond:
                        stream["end_code"], stream["end_message"] = item.code, item.message
                    context.set_code(item.code)
                    context.set_details(item.message)
                    return
                yield item
        finally:
            with self._cond:
                stream["open"] = False
                self._queues.pop(stream["index"], None)
                self._cond.notify_all()

    def _read(self, stream, q, request_iterator):
        try:
            for raw in request_iterator:
                end = self._handle(stream, q, raw)
                if end is not None:
                    q.put(end)
                    return
        except grpc.RpcError:
            q.put(_GONE)  # cancelled / connection lost
            return
        except Exception as e:  # never leave the responder waiting on a dead reader
            q.put(_End(grpc.StatusCode.INTERNAL, f"xds-double reader failed: {e!r}"))
            return
        q.put(_End(grpc.StatusCode.OK, ""))  # client half-closed: istiod returns on EOF

    def _handle(self, stream, q, raw):
        """Records one request and answers it; returns an _End when the stream must stop."""
        now, mono = time.time(), time.monotonic()
        try:
            req = decode_delta_request(raw)
        except WireError as e:
            with self._cond:
                stream["error_raw"] = raw
            return self._reject(stream, f"malformed DeltaDiscoveryRequest: {e}")
        with self._cond:
            first_on_stream = not stream["requests"]
            req.update(stream=stream["index"], seq=self._seq, time=now, monotonic=mono, raw=raw,
                       initial=False, nonce_known=None, resolved=None)
            self._seq += 1
            type_url = req["type_url"]
            if req["response_nonce"]:
                req["nonce_known"] = any(r["nonce"] == req["response_nonce"] and r["type_url"] == type_url
                                         for r in stream["responses"])
            stream["requests"].append(req)
            self._cond.notify_all()
            if first_on_stream and (req["node"] is None or not req["node"]["id"]):
                return self._reject(stream, "missing node information", locked=True)
            if not type_url or req["error_detail"] is not None or stream["index"] not in self._queues:
                return None  # NACKs are only recorded; an empty type_url has no generator
            subs = stream["subscriptions"]
            requested = set(req["resource_names_subscribe"]) | set(req["initial_resource_versions"])
            if type_url not in subs:
                names = requested - set(req["resource_names_unsubscribe"])
                sub = {"wildcard": "*" in names or not req["resource_names_subscribe"],
                       "names": names - {"*"}}
                subs[type_url] = sub
                req["initial"] = True
            elif req["response_nonce"]:
                return None  # ACK
            else:
                sub = subs[type_url]
                # istiod answers only what the request adds to the subscription: a name already
                # subscribed (a lookup key asked before and not unsubscribed) gets no response.
                fresh = {n for n in req["resource_names_subscribe"] if n != "*" and n not in sub["names"]}
                for name in req["resource_names_subscribe"]:
                    if name == "*":
                        sub["wildcard"] = True
                    else:
                        sub["names"].add(name)
                for name in req["resource_names_unsubscribe"]:
                    if name == "*":
                        sub["wildcard"] = False
                    else:
                        sub["names"].discard(name)
                if not req["resource_names_subscribe"]:
                    return None  # only unsubscribing: nothing to send
                if not fresh and "*" not in req["resource_names_subscribe"]:
                    req["unanswered"] = True
                    return None
                requested = fresh | (set(req["initial_resource_versions"]))
            requested.discard("*")
            state = self._state.get(type_url, {})
            if type_url == ADDRESS and not sub["wildcard"]:
                resources, removed = self._on_demand(req, state, requested)
            else:
                wanted = state.keys() if sub["wildcard"] else requested & state.keys()
                resources = [(name, *state[name]) for name in sorted(wanted)]
                removed = sorted(requested - state.keys())
            self._send(stream, q, type_url, self._next_nonce(), resources, removed, initial=req["initial"],
                       request_seq=req["seq"])
            if not sub["wildcard"]:
                sub["names"].update(name for name, *_ in resources)
        return None

    def _on_demand(self, req, state, requested):
        """Under the lock: an on-demand Address request's answer (istiod's WorkloadGenerator):
        each requested key resolved by _lookup, every resource once under its own name with the
        keys that found it (other than its name) as aliases; keys that found nothing removed.
        Records req["resolved"] = {key: [resource names]}."""
        resolved = {key: self._lookup(state, key) for key in sorted(requested)}
        req["resolved"] = resolved
        order, aliases = [], {}
        for key, names in resolved.items():
            for name in names:
                if name not in aliases:
                    order.append(name)
                    aliases[name] = []
                if key != name and key not in aliases[name]:
                    aliases[name].append(key)
        resources = [(name, *state[name], None, aliases[name]) for name in order]
        return resources, sorted(key for key, names in resolved.items() if not names)

    def _reject(self, stream, message, locked=False):
        if not locked:
            with self._cond:
                return self._reject(stream, message, locked=True)
        stream["error"] = message
        self.errors.append((stream["index"], message))
        self._cond.notify_all()
        return _End(grpc.StatusCode.INVALID_ARGUMENT, message)
