"""A stand-in for istiod's CA (istio.v1.auth.IstioCertificateService) for the integration tests.

It speaks the real protocol -- gRPC over HTTP/2 over TLS -- so the Swift CA client is tested
against the same bytes istiod would send, and it records each call so tests can assert on what
the client sent.

Two separate roots are involved, on purpose:
  * the server's TLS certificate (DNS SAN = server_name, IP SAN = 127.0.0.1) is issued by a
    throwaway root made here; `root_pem_path` is that root, i.e. what the client must trust to
    dial the CA (ztunnel's CA_ROOT_CA / istiod root);
  * the workload certificates are issued by the MiniCA passed in; the last element of every
    cert_chain is that MiniCA's root.
Keeping them apart catches a client that confuses "the root I dial the CA with" and "the root my
workload certificates chain to".

The protobuf wire format is handled by hand (no `protobuf` package, no generated code) so the
only dependency beyond `cryptography` is grpcio.

Differences from istiod worth knowing: the leaf's SAN is copied from the CSR (istiod ignores the
CSR's SAN and uses the caller's, or the authorised ImpersonatedIdentity); there is no node
authorisation and no max-TTL check; validity_duration 0 means the 24h default, as in istiod.
"""
import datetime
import ipaddress
import os
import struct
import threading
import time
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from protowire import WIRE_I32, WIRE_I64, WIRE_LEN, WIRE_VARINT  # noqa: F401 (the doubles import them from here)
from protowire import key as _key, length_delimited as _len_field, varint as _varint

SERVICE = "istio.v1.auth.IstioCertificateService"
METHOD = f"/{SERVICE}/CreateCertificate"
DEFAULT_TTL_SECONDS = 24 * 3600  # istiod's default workload certificate TTL

# ---------------------------------------------------------------------------------------------
# Protobuf wire format: only what IstioCertificateRequest/Response and google.protobuf.Struct need.
# Malformed input raises WireError rather than being guessed at, so a client encoding bug shows
# up as INVALID_ARGUMENT instead of a quietly wrong record.

MAX_DEPTH = 64  # Struct/ListValue nesting; the protobuf runtimes stop at 100


class WireError(ValueError):
    pass


def _read_varint(buf, pos):
    result = 0
    for i in range(10):
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            # The 10th byte may only carry the 64th bit.
            if i == 9 and byte > 1:
                raise WireError("varint overflows 64 bits")
            return result, pos
    raise WireError("varint longer than 10 bytes")


def iter_fields(buf):
    """Yields (field number, wire type, value): int for varints, bytes for everything else."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if not 1 <= number <= (1 << 29) - 1:
            raise WireError(f"invalid field number {number}")
        if wire == WIRE_VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire in (WIRE_I64, WIRE_I32):
            size = 8 if wire == WIRE_I64 else 4
            if pos + size > len(buf):
                raise WireError(f"truncated fixed{size * 8} in field {number}")
            value, pos = bytes(buf[pos:pos + size]), pos + size
        elif wire == WIRE_LEN:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise WireError(f"field {number} length {size} runs past the end")
            value, pos = bytes(buf[pos:pos + size]), pos + size
        else:
            # 3/4 are deprecated groups, which none of these messages use; 6/7 do not exist.
            raise WireError(f"unsupported wire type {wire} in field {number}")
        yield number, wire, value


def _expect(number, wire, want):
    if wire != want:
        raise WireError(f"field {number} has wire type {wire}, expected {want}")


def _utf8(number, value):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"field {number} is not valid UTF-8 (proto3 strings must be)") from None


def _int64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_value(buf, depth=0):
    """google.protobuf.Value -> None, float, str, bool, dict or list."""
    if depth > MAX_DEPTH:
        raise WireError("Struct nested too deeply")
    kind, result = None, None
    for number, wire, value in iter_fields(buf):
        if number == 1:
            _expect(number, wire, WIRE_VARINT)
            if value != 0:
                raise WireError(f"null_value {value} is not NULL_VALUE")
            kind, result = number, None
        elif number == 2:
            _expect(number, wire, WIRE_I64)
            kind, result = number, struct.unpack("<d", value)[0]
        elif number == 3:
            _expect(number, wire, WIRE_LEN)
            kind, result = number, _utf8(number, value)
        elif number == 4:
            _expect(number, wire, WIRE_VARINT)
            kind, result = number, value != 0
        elif number == 5:
            _expect(number, wire, WIRE_LEN)
            kind, result = number, decode_struct(value, depth + 1)
        elif number == 6:
            _expect(number, wire, WIRE_LEN)
            items = []
            for n, w, v in iter_fields(value):
                if n == 1:
                    _expect(n, w, WIRE_LEN)
                    items.append(decode_value(v, depth + 1))
            kind, result = number, items
        # Unknown fields are skipped, as every protobuf runtime does.
    if kind is None:
        # A Value with no kind has no JSON meaning; istiod would read it as nothing at all.
        raise WireError("google.protobuf.Value has no kind set")
    return result


def decode_struct(buf, depth=0):
    """google.protobuf.Struct -> dict of str to decoded Value."""
    fields = {}
    for number, wire, entry in iter_fields(buf):
        if number != 1:
            continue
        _expect(number, wire, WIRE_LEN)
        key, value, has_value = "", None, False
        for n, w, v in iter_fields(entry):
            if n == 1:
                _expect(n, w, WIRE_LEN)
                key = _utf8(n, v)
            elif n == 2:
                _expect(n, w, WIRE_LEN)
                value, has_value = decode_value(v, depth + 1), True
        if not has_value:
            raise WireError(f"Struct entry {key!r} has no value")
        fields[key] = value  # map semantics: a repeated key keeps the last value
    return fields


def decode_certificate_request(buf):
    """IstioCertificateRequest -> dict(csr, validity_duration, metadata, unknown_fields).

    metadata is None when the field is absent, {} when present but empty: the client's choice
    to send it at all is part of what tests may want to check."""
    request = {"csr": "", "validity_duration": 0, "metadata": None, "unknown_fields": []}
    for number, wire, value in iter_fields(buf):
        if number == 1:
            _expect(number, wire, WIRE_LEN)
            request["csr"] = _utf8(number, value)
        elif number == 3:
            _expect(number, wire, WIRE_VARINT)
            request["validity_duration"] = _int64(value)
        elif number == 4:
            _expect(number, wire, WIRE_LEN)
            # A message field seen twice is merged, per the protobuf spec.
            request["metadata"] = {**(request["metadata"] or {}), **decode_struct(value)}
        else:
            request["unknown_fields"].append(number)
    return request


def decode_certificate_response(buf):
    """IstioCertificateResponse -> list of PEM strings (cert_chain)."""
    chain = []
    for number, wire, value in iter_fields(buf):
        if number == 1:
            _expect(number, wire, WIRE_LEN)
            chain.append(_utf8(number, value))
    return chain


def encode_value(value):
    # bool before int: bool is an int subclass in Python.
    if value is None:
        return _key(1, WIRE_VARINT) + _varint(0)
    if isinstance(value, bool):
        return _key(4, WIRE_VARINT) + _varint(int(value))
    if isinstance(value, (int, float)):
        return _key(2, WIRE_I64) + struct.pack("<d", float(value))
    if isinstance(value, str):
        return _len_field(3, value)
    if isinstance(value, dict):
        return _len_field(5, encode_struct(value))
    if isinstance(value, (list, tuple)):
        return _len_field(6, b"".join(_len_field(1, encode_value(v)) for v in value))
    raise TypeError(f"cannot encode {type(value).__name__} as google.protobuf.Value")


def encode_struct(fields):
    return b"".join(_len_field(1, _len_field(1, key) + _len_field(2, encode_value(value)))
                    for key, value in fields.items())


def encode_certificate_request(csr, validity_duration=0, metadata=None):
    """IstioCertificateRequest bytes; proto3 defaults (empty csr, 0 duration) are left out, as a
    real encoder does, and metadata=None leaves the field out altogether."""
    out = b""
    if csr:
        out += _len_field(1, csr)
    if validity_duration:
        out += _key(3, WIRE_VARINT) + _varint(validity_duration)
    if metadata is not None:
        out += _len_field(4, encode_struct(metadata))
    return out


def encode_certificate_response(chain):
    return b"".join(_len_field(1, pem) for pem in chain)


# ---------------------------------------------------------------------------------------------
# TLS material for the server itself.

def _server_tls(server_name, root_common_name="ca-double server TLS root"):
    """Returns (root PEM, server key PEM, server cert PEM) from a fresh root used only here.

    root_common_name only labels the root (xds_double.py passes its own, so a test that hands
    the daemon both roots can tell them apart in a TLS error)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, root_common_name)])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    try:
        names = [x509.IPAddress(ipaddress.ip_address(server_name))]
    except ValueError:
        names = [x509.DNSName(server_name)]
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    if loopback not in names:
        names.append(loopback)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
            .issuer_name(root_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (root.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            cert.public_bytes(pem))


# ---------------------------------------------------------------------------------------------

def _raw(data):
    return data


class TLSGrpcServer:
    """What both of istiod's stand-ins share: a throwaway TLS root and server certificate
    (`root_pem_path`, what the client must trust), a gRPC server on `host` (127.0.0.1) with one service's
    methods, start/stop and `with`. `handlers` maps method names to grpc method handlers."""

    def __init__(self, tmp_dir, server_name, root_common_name, root_file, workers, host="127.0.0.1"):
        self.server_name = server_name
        self.host = host
        self.port = None
        self._server = None
        self._workers = workers
        root, self._server_key, self._server_cert = _server_tls(server_name, root_common_name=root_common_name)
        os.makedirs(tmp_dir, exist_ok=True)
        self._root_path = os.path.join(tmp_dir, root_file)
        with open(self._root_path, "wb") as f:
            f.write(root)
        self.root_pem = root

    @property
    def root_pem_path(self):
        """The root that issued the server's TLS certificate (not the workload CA's root)."""
        return self._root_path

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def _handlers(self):
        raise NotImplementedError

    def start(self):
        if self._server is not None:
            raise RuntimeError("already started")
        service, methods = self._handlers()
        handler = grpc.method_handlers_generic_handler(service, methods)
        # so_reuseport off: with it on, a second server could silently share a port.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._workers), handlers=[handler],
                             options=[("grpc.so_reuseport", 0)])
        credentials = grpc.ssl_server_credentials([(self._server_key, self._server_cert)])
        port = server.add_secure_port(f"{self.host}:0", credentials)
        if not port:
            raise RuntimeError(f"grpc could not bind {self.host}")
        server.start()
        self._server, self.port = server, port
        return port

    def _stopping(self):
        """Called before the server stops (end open streams)."""

    def stop(self):
        server, self._server = self._server, None
        self._stopping()
        if server is not None:
            # grace=0 cancels calls in flight; wait() is bounded so a wedged server can't hang teardown.
            server.stop(0).wait(10)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class IstioCADouble(TLSGrpcServer):
    """istiod's CreateCertificate on 127.0.0.1 over TLS, backed by a MiniCA.

    Every call, including rejected ones, appends a dict to `calls` *before* the answer is sent,
    so once the client has its answer the record is there. Keys of a record:
      time, monotonic   when the call arrived (time.time(), time.monotonic())
      peer              grpc's peer string, e.g. "ipv4:127.0.0.1:51234"
      headers           gRPC metadata as a dict (lower-case names; last wins); header_list keeps
                        every (name, value) pair in order
      authorization, clusterid   shortcuts into headers (None when absent)
      raw_request       the request bytes as received
      csr, validity_duration, metadata, unknown_fields   the decoded request (None if undecodable);
                        `metadata` is the request's Struct, not the gRPC headers
      impersonated_identity      metadata["ImpersonatedIdentity"] when present
      csr_sans          the CSR's SANs as "URI:...", "DNS:...", "IP:..." strings; csr_uris only URIs
      csr_san_critical  whether the CSR's SAN extension is critical (None without one)
      csr_subject_empty, csr_signature_valid
      outage            whether the outage switch was on
      code              the grpc.StatusCode answered; error is the reason when not OK
      cert_chain        the PEMs returned (None when not OK)
    """

    def __init__(self, ca, tmp_dir, server_name="istiod.istio-system.svc", host="127.0.0.1"):
        super().__init__(tmp_dir, server_name, "ca-double server TLS root", "ca-double-tls-root.pem", workers=4, host=host)
        self.ca = ca
        self.calls = []
        self._cond = threading.Condition()
        self._outage = False
        self._token = None

    def _handlers(self):
        return SERVICE, {"CreateCertificate": grpc.unary_unary_rpc_method_handler(
            self._create_certificate, request_deserializer=_raw, response_serializer=_raw)}

    def set_outage(self, on):
        with self._cond:
            self._outage = bool(on)

    def require_token(self, token):
        """Demands `authorization: Bearer <token>` from now on; None turns the check off."""
        with self._cond:
            self._token = token

    def wait_for_calls(self, count, timeout=10):
        """Blocks until at least `count` calls are recorded; returns a copy of them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= count, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {count} CA calls "
                                     f"(got {len(self.calls)})")
            return list(self.calls)

    def _create_certificate(self, request, context):
        header_list = [(k, v) for k, v in context.invocation_metadata()]
        headers = dict(header_list)
        call = {
            "time": time.time(), "monotonic": time.monotonic(), "peer": context.peer(),
            "headers": headers, "header_list": header_list,
            "authorization": headers.get("authorization"), "clusterid": headers.get("clusterid"),
            "raw_request": request,
            "csr": None, "validity_duration": None, "metadata": None, "unknown_fields": None,
            "impersonated_identity": None,
            "csr_sans": None, "csr_uris": None, "csr_san_critical": None,
            "csr_subject_empty": None, "csr_signature_valid": None,
            "outage": False, "code": grpc.StatusCode.OK, "error": None, "cert_chain": None,
        }
        error = self._inspect(request, call)
        with self._cond:
            call["outage"], token = self._outage, self._token
        if call["outage"]:
            code, error = grpc.StatusCode.UNAVAILABLE, "outage switched on by the test"
        elif token is not None and call["authorization"] != f"Bearer {token}":
            code, error = grpc.StatusCode.UNAUTHENTICATED, "authorization header does not carry the required token"
        elif error is not None:
            code = grpc.StatusCode.INVALID_ARGUMENT
        else:
            ttl = call["validity_duration"] or DEFAULT_TTL_SECONDS
            try:
                leaf = self.ca.sign_csr(call["csr"], ttl).decode()
                call["cert_chain"] = [leaf, self.ca.root_pem.decode()]
                code = grpc.StatusCode.OK
            except ValueError as e:
                code, error = grpc.StatusCode.INVALID_ARGUMENT, f"cannot sign: {e}"
        call["code"], call["error"] = code, error
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()
        if code != grpc.StatusCode.OK:
            context.abort(code, error)
        return encode_certificate_response(call["cert_chain"])

    @staticmethod
    def _inspect(request, call):
        """Fills the request fields of `call`; returns why the request is unusable, or None."""
        try:
            decoded = decode_certificate_request(request)
        except WireError as e:
            return f"malformed IstioCertificateRequest: {e}"
        call.update(decoded)
        metadata = decoded["metadata"] or {}
        call["impersonated_identity"] = metadata.get("ImpersonatedIdentity")
        if decoded["validity_duration"] < 0:
            return f"negative validity_duration {decoded['validity_duration']}"
        try:
            csr = x509.load_pem_x509_csr(decoded["csr"].encode())
        except ValueError as e:
            return f"csr is not a PEM certificate request: {e}"
        call["csr_subject_empty"] = len(csr.subject) == 0
        call["csr_signature_valid"] = csr.is_signature_valid
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            call["csr_sans"], call["csr_uris"] = [], []
        except Exception as e:  # duplicate or undecodable extensions: still record the call
            return f"csr extensions cannot be read: {e}"
        else:
            call["csr_san_critical"] = san.critical
            call["csr_sans"] = [_general_name(n) for n in san.value]
            call["csr_uris"] = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        return None


def _general_name(name):
    prefix = {x509.UniformResourceIdentifier: "URI", x509.DNSName: "DNS", x509.IPAddress: "IP",
              x509.RFC822Name: "email"}.get(type(name), type(name).__name__)
    return f"{prefix}:{name.value}"
