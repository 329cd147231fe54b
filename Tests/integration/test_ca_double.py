"""The istiod CA double, exercised with a real gRPC client so the Swift client's tests can trust it."""
import datetime

import pytest

grpc = pytest.importorskip("grpc")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

from ca_double import (METHOD, IstioCADouble, WireError, decode_certificate_request,  # noqa: E402
                       decode_certificate_response, encode_certificate_request)
from identities import MiniCA  # noqa: E402

SPIFFE = "spiffe://cluster.local/ns/a/sa/b"
TTL = 3600


@pytest.fixture
def double(tmp_path):
    server = IstioCADouble(MiniCA(), str(tmp_path))
    server.start()
    yield server
    server.stop()


def _channel(double, override=True):
    with open(double.root_pem_path, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    # The override makes the client check the certificate for the istiod name while dialing an IP,
    # which is what the Swift client does with CA_ADDRESS=https://127.0.0.1:port.
    options = [("grpc.ssl_target_name_override", double.server_name)] if override else []
    return grpc.secure_channel(double.address, credentials, options=options)


@pytest.fixture
def create(double):
    channel = _channel(double)
    rpc = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    def call(request, token="tok"):
        metadata = [("clusterid", "Kubernetes")]
        if token is not None:
            metadata.append(("authorization", f"Bearer {token}"))
        return rpc(request, metadata=metadata, timeout=10)

    yield call
    channel.close()


def make_csr(spiffe=SPIFFE):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def request_for(spiffe=SPIFFE, ttl=TTL):
    csr, key = make_csr(spiffe)
    return encode_certificate_request(csr, ttl, {"ImpersonatedIdentity": spiffe}), key


def test_issues_leaf_and_records_the_call(double, create):
    request, key = request_for()
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    chain = decode_certificate_response(create(request))

    assert len(chain) == 2 and all(p.startswith("-----BEGIN CERTIFICATE-----") for p in chain)
    assert chain[1].encode() == double.ca.root_pem
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    leaf.verify_directly_issued_by(double.ca.cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE] and san.critical
    lifetime = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
    assert abs(lifetime - TTL) <= 2
    assert abs((leaf.not_valid_before_utc - before).total_seconds()) <= 2
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)

    [call] = double.calls
    assert call["code"] == grpc.StatusCode.OK and call["error"] is None
    assert call["authorization"] == "Bearer tok" and call["clusterid"] == "Kubernetes"
    assert call["metadata"] == {"ImpersonatedIdentity": SPIFFE}
    assert call["impersonated_identity"] == SPIFFE
    assert call["validity_duration"] == TTL
    assert call["csr_sans"] == [f"URI:{SPIFFE}"] and call["csr_uris"] == [SPIFFE]
    assert call["csr_san_critical"] is True and call["csr_subject_empty"] is True
    assert call["csr"].startswith("-----BEGIN CERTIFICATE REQUEST-----")
    assert call["unknown_fields"] == [] and call["cert_chain"] == chain
    assert call["peer"].startswith("ipv4:127.0.0.1:")


def test_server_certificate_also_valid_for_loopback_ip(double):
    channel = _channel(double, override=False)
    try:
        request, _ = request_for()
        chain = decode_certificate_response(
            channel.unary_unary(METHOD)(request, metadata=[("authorization", "Bearer x")], timeout=10))
        assert len(chain) == 2
    finally:
        channel.close()


def test_server_certificate_is_not_from_the_workload_ca(double):
    with open(double.root_pem_path, "rb") as f:
        assert f.read() != double.ca.root_pem


def test_outage_answers_unavailable_and_still_counts(double, create):
    double.set_outage(True)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as failed:
            create(request_for()[0])
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [c["code"] for c in double.calls] == [grpc.StatusCode.UNAVAILABLE] * 2
    assert all(c["outage"] and c["impersonated_identity"] == SPIFFE for c in double.calls)

    double.set_outage(False)
    assert len(decode_certificate_response(create(request_for()[0]))) == 2
    assert double.wait_for_calls(3)[-1]["code"] == grpc.StatusCode.OK


def test_wrong_or_missing_token_is_unauthenticated(double, create):
    double.require_token("secret")
    for token in ("tok", None):
        with pytest.raises(grpc.RpcError) as failed:
            create(request_for()[0], token=token)
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert double.calls[-1]["authorization"] is None
    assert len(decode_certificate_response(create(request_for()[0], token="secret"))) == 2

    double.require_token(None)
    assert len(decode_certificate_response(create(request_for()[0], token="anything"))) == 2


def test_malformed_requests_are_invalid_argument(double, create):
    bad = [
        b"\x0a\x05ab",                                  # csr length past the end
        b"\x18\x80\x80",                                # truncated varint
        encode_certificate_request("not a csr", TTL, {}),
        encode_certificate_request(make_csr()[0], -5, {}),
    ]
    for request in bad:
        with pytest.raises(grpc.RpcError) as failed:
            create(request)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [c["code"] for c in double.calls] == [grpc.StatusCode.INVALID_ARGUMENT] * len(bad)
    assert double.calls[3]["validity_duration"] == -5


def test_zero_validity_means_istiod_default(double, create):
    csr, _ = make_csr()
    chain = decode_certificate_response(create(encode_certificate_request(csr, 0, None)))
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 24 * 3600
    assert double.calls[0]["metadata"] is None and double.calls[0]["validity_duration"] == 0


def test_wire_codec_round_trip_and_strictness():
    metadata = {"ImpersonatedIdentity": SPIFFE, "n": 1.5, "ok": True, "none": None,
                "nested": {"list": ["x", 2.0, False]}}
    decoded = decode_certificate_request(encode_certificate_request("PEM", -1, metadata))
    assert decoded == {"csr": "PEM", "validity_duration": -1, "metadata": metadata, "unknown_fields": []}
    # An unknown field is tolerated (as protobuf does) but reported.
    assert decode_certificate_request(b"\x10\x07")["unknown_fields"] == [2]
    for broken in (b"\x0a\x01",                     # length past the end
                   b"\x08\x01",                     # csr sent as a varint
                   b"\x1b",                         # group wire type
                   b"\x0a\x01\xff",                 # csr not UTF-8
                   b"\x22\x04\x0a\x02\x0a\x00",      # Struct entry without a value
                   b"\x22\x06\x0a\x04\x12\x02\x28\x01",  # Value struct_value with wrong wire type
                   b"\x18" + b"\xff" * 10 + b"\x01"):  # varint over ten bytes
        with pytest.raises(WireError):
            decode_certificate_request(broken)
