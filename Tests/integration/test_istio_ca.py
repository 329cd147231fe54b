"""The Istio CA backend against a test double speaking the real protobuf messages over gRPC/TLS
(ca_double.py): the CSR, the token (re-read per call), the cluster id and the impersonation
metadata; rotation at half-life; an outage retried with backoff while the old certificate
keeps serving."""
import os
import pathlib
import shutil
import tempfile

import pytest

from daemon import http, wait_for
from identities import MiniCA, serving_config
from test_certificates import CART, LOCAL_CONFIG
from test_identity import try_handshake

grpc = pytest.importorskip("grpc")
from ca_double import IstioCADouble  # noqa: E402


@pytest.fixture
def token_dir():
    # The CertWorker reads the token as ZTUNNEL_WORKER_UID, as a projected token (mode 0644) is
    # read in a pod; pytest's own tmp_path is private to root.
    path = tempfile.mkdtemp(prefix="ztunnel-token-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ca_double(tmp_path):
    ca = MiniCA()
    double = IstioCADouble(ca, str(tmp_path / "double"))
    double.start()
    ca.issue(str(tmp_path / "client"), "client")
    yield double
    double.stop()


def start(start_daemon, tmp_path, double, ttl, token_dir, ready=True, **env):
    token = pathlib.Path(token_dir) / "istio-token"
    token.write_text("token-1")
    os.chmod(token, 0o644)
    double.require_token("token-1")
    daemon = start_daemon(extra_env={
        "CA_ADDRESS": f"https://127.0.0.1:{double.port}", "CA_ROOT_CA": double.root_pem_path,
        "AUTH_TOKEN": str(token), "ISTIO_META_CLUSTER_ID": "test-cluster", "SECRET_TTL": ttl, "NODE_NAME": "node-a",
        "CA_HEADER_X_TENANT": "blue", **env,
    })
    with open(daemon.env["LOCAL_XDS_PATH"], "w") as f:
        f.write(LOCAL_CONFIG)
    if ready:
        daemon.wait_ready()
    return daemon, token


def ok_calls(double):
    return [c for c in double.calls if c["error"] is None]


def test_csr_token_cluster_id_impersonation_and_rotation(start_daemon, tmp_path, ca_double, token_dir):
    daemon, token = start(start_daemon, tmp_path, ca_double, "4s", token_dir)
    wait_for(lambda: len(ok_calls(ca_double)) >= 2, 30, "a CSR and its renewal at half-life")
    first = ok_calls(ca_double)[0]
    assert first["csr_uris"] == [CART] and first["csr_san_critical"] and first["csr_subject_empty"]
    assert first["csr_signature_valid"] and first["validity_duration"] == 4
    assert first["authorization"] == "Bearer token-1" and first["clusterid"] == "test-cluster"
    assert first["headers"].get("x_tenant") == "blue", first["headers"]  # CA_HEADER_<K> (§18)
    assert first["metadata"] == {"ImpersonatedIdentity": CART}
    # The double records a call before it answers: wait for the CertWorker's side of the second.
    def issued():
        return [e for e in daemon.audit_events("certificate_issued") if e["identity"] == CART]
    wait_for(lambda: len(issued()) >= 2, 30, "two issued certificates in the audit log")
    assert issued()[0]["ca"] == "istiod" and issued()[1]["renewal"] == "true"

    # The token rotates on disk: the next CSR carries the new one.
    token.write_text("token-2")
    ca_double.require_token("token-2")
    before = len(ok_calls(ca_double))
    wait_for(lambda: len(ok_calls(ca_double)) > before, 30, "a CSR with the new token")
    assert ok_calls(ca_double)[-1]["authorization"] == "Bearer token-2"
    sans, _ = wait_for(lambda: try_handshake(daemon.ports["inbound"], str(tmp_path / "client")), 30, "a handshake")
    assert sans == [CART]


def test_outage_is_retried_with_backoff_while_the_old_certificate_serves(start_daemon, tmp_path, ca_double, token_dir):
    daemon, _ = start(start_daemon, tmp_path, ca_double, "12s", token_dir)
    wait_for(lambda: ok_calls(ca_double), 30, "the first certificate")
    ca_double.set_outage(True)
    failed = lambda: [e for e in daemon.audit_events("certificate_failed") if e["identity"] == CART]  # noqa: E731
    wait_for(lambda: len(failed()) >= 3, 30, "three failed renewals")
    backoffs = [int(e["backoff_ms"]) for e in failed()[:3]]
    assert backoffs[0] < backoffs[1] < backoffs[2]  # exponential, with jitter within ±20 %
    # The certificate from before the outage is still valid and still serves.
    entry = next(c for c in daemon.config_dump()["certificates"] if c["identity"] == CART)
    assert entry["state"] == "Available"
    sans, _ = wait_for(lambda: try_handshake(daemon.ports["inbound"], str(tmp_path / "client")), 30, "a handshake")
    assert sans == [CART]
    ca_double.set_outage(False)
    recovered = len([e for e in daemon.audit_events("certificate_issued") if e["identity"] == CART])
    wait_for(lambda: len([e for e in daemon.audit_events("certificate_issued") if e["identity"] == CART]) > recovered,
             60, "a certificate after the outage")
    assert next(c for c in daemon.config_dump()["certificates"] if c["identity"] == CART)["failedRenewals"] >= 3


@pytest.mark.parametrize("name,works", [("istiod.istio-system.svc", True), ("elsewhere.example", False)])
def test_alt_ca_hostname_is_the_name_the_cas_certificate_must_carry(start_daemon, tmp_path, ca_double, token_dir, name, works):
    """ALT_CA_HOSTNAME (§18): the CA's certificate is verified against this name instead of
    CA_ADDRESS's host (127.0.0.1 here, which the double's certificate also carries): its own
    DNS name passes, another name is refused, so nothing is sent to a CA that is not the one
    named."""
    daemon, _ = start(start_daemon, tmp_path, ca_double, "1h", token_dir, ready=works, ALT_CA_HOSTNAME=name)
    if works:
        assert [e for e in daemon.audit_events("certificate_issued") if e["identity"] == CART]
    else:
        failed = lambda: [e for e in daemon.audit_events("certificate_failed") if e["identity"] == CART]  # noqa: E731
        wait_for(failed, 30, "the CA refused for its name")
        assert "elsewhere.example" in failed()[0]["error"] or "certificate" in failed()[0]["error"], failed()[0]
        assert not ok_calls(ca_double)


def test_a_stuck_ca_does_not_stall_signing(start_daemon, tmp_path, token_dir):
    """CSRs go to the CA from a thread of their own: while the CA swallows a request, the
    CertWorker still signs handshakes for the identities it has."""
    import socket
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(8)  # connections complete in the kernel; nothing ever answers them
    try:
        ca = MiniCA()
        ca.issue(str(tmp_path / "identities" / "server"), "server")
        ca.issue(str(tmp_path / "client"), "client")
        daemon = start_daemon(extra_env={
            "CA_ADDRESS": f"https://127.0.0.1:{black_hole.getsockname()[1]}", "CA_ROOT_CA": ca.root_pem.decode(),
            "ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), "NODE_NAME": "node-a",
        })
        # The static "server" identity owns loopback; cart's CSR goes to the silent CA.
        with open(daemon.env["LOCAL_XDS_PATH"], "w") as f:
            f.write(serving_config() + LOCAL_CONFIG.split("workloads:", 1)[1].replace('["127.0.0.1"]', '["10.10.2.9"]'))
        # Not ready while a local workload's certificate is missing (issue #8), and readiness
        # names it; the listeners serve meanwhile.
        def readiness():
            try:
                return http(daemon.ports["readiness"], "/healthz/ready")
            except OSError:
                return None  # not listening yet
        wait_for(lambda: readiness() == (500, "not ready, pending: certificates (1 pending)\n"), 30,
                 "readiness to name the certificate the silent CA holds back")
        wait_for(lambda: daemon.audit_events("csr_sent"), 30, "a CSR on its way to the silent CA")
        sans, _ = wait_for(lambda: try_handshake(daemon.ports["inbound"], str(tmp_path / "client")), 30,
                           "a handshake while the CSR is pending")
        assert sans == ["spiffe://cluster.local/ns/default/sa/server"]
        assert not daemon.audit_events("certificate_failed")  # the CA call is still in flight
    finally:
        black_hole.close()
