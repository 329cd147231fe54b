"""Certificates from the built-in CA: issuance for the local config's workloads, rotation at
half-life, inspection (/config_dump, `ztunnel certs`, metrics) and audit."""
import base64
import subprocess

from cryptography import x509

from daemon import ZTUNNEL, http, wait_for
from identities import MiniCA
from test_identity import try_handshake

LOCAL_CONFIG = """
workloads:
- uid: test//Pod/shop/cart-1
  name: cart-1
  namespace: shop
  serviceAccount: cart
  trustDomain: cluster.local
  workloadIps: ["127.0.0.1"]  # 15008 on loopback presents cart's certificate
  protocol: HBONE
  node: node-a
- uid: test//Pod/shop/web-1
  name: web-1
  namespace: shop
  serviceAccount: web
  trustDomain: cluster.local
  workloadIps: ["10.10.2.10"]
  protocol: HBONE
  node: node-b
policies:
- name: only-web
  namespace: shop
  scope: Namespace
  action: Allow
  dryRun: false
  rules:
  - - - principals:
        - !Exact cluster.local/ns/shop/sa/web
"""
CART = "spiffe://cluster.local/ns/shop/sa/cart"


def start(start_daemon, tmp_path, **env):
    ca = MiniCA()
    ca.write_cacerts(str(tmp_path / "cacerts"))
    ca.issue(str(tmp_path / "client"), "client")
    daemon = start_daemon(extra_env={"ZTUNNEL_CA_DIR": str(tmp_path / "cacerts"), "NODE_NAME": "node-a", **env})
    with open(daemon.env["LOCAL_XDS_PATH"], "w") as f:
        f.write(LOCAL_CONFIG)
    return daemon, ca


def issued(daemon, identity):
    return [e for e in daemon.audit_events("certificate_issued") if e["identity"] == identity]


def test_issues_for_local_workloads_and_rotates_at_half_life(start_daemon, tmp_path):
    daemon, ca = start(start_daemon, tmp_path, SECRET_TTL="4s")
    daemon.wait_ready()
    wait_for(lambda: len(issued(daemon, CART)) >= 3, 30, "two renewals of the cart certificate")
    first, second, third = issued(daemon, CART)[:3]
    # Only the workload on this node (NODE_NAME=node-a) gets a certificate.
    assert {e["identity"] for e in daemon.audit_events("certificate_issued")} == {CART}
    assert first["renewal"] == "false" and second["renewal"] == "true"
    assert len({first["serial"], second["serial"], third["serial"]}) == 3
    assert first["ca"] == "builtin" and first["issuer"] == "O=cluster.local"
    assert first["root_sha256"] == ca.cert.fingerprint(__import__("cryptography.hazmat.primitives.hashes",
                                                                 fromlist=["SHA256"]).SHA256()).hex()
    # Renewal at half of the 4 s lifetime, less at most 5 % jitter: a CSR every ~2 s, not a storm.
    assert 3 <= len(issued(daemon, CART)) <= 6
    # Every CSR is audited before its certificate, and the sequence only grows.
    events = [e for e in daemon.audit() if e.get("identity") == CART]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["csr_sent", "certificate_issued"]
    seqs = [e["seq"] for e in daemon.audit()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_inspection_and_a_handshake_with_a_managed_identity(start_daemon, tmp_path):
    daemon, ca = start(start_daemon, tmp_path, SECRET_TTL="1h")
    daemon.wait_ready()
    wait_for(lambda: issued(daemon, CART), 30, "the cart certificate")

    def available():
        entries = daemon.config_dump()["certificates"]
        return entries if entries and entries[0]["state"] == "Available" else None
    (entry,) = wait_for(available, 30, "an Available certificate in /config_dump")
    assert entry["identity"] == CART
    leaf = x509.load_pem_x509_certificate(base64.b64decode(entry["certChain"][0]["pem"]))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [CART]
    assert format(leaf.serial_number, "x") == entry["certChain"][0]["serialNumber"].lstrip("0")
    assert entry["certChain"][0]["expirationTime"].endswith("Z") and entry["nextRenewal"] < entry["certChain"][0]["expirationTime"]
    root = x509.load_pem_x509_certificate(base64.b64decode(entry["rootCerts"][0]["pem"]))
    assert root == ca.cert

    # The handshake on 15008 presents the managed identity, signed through its key handle.
    sans, _ = wait_for(lambda: try_handshake(daemon.ports["inbound"], str(tmp_path / "client")), 30, "a handshake")
    assert sans == [CART]

    table = subprocess.run([ZTUNNEL, "certs"], env={"ZTUNNEL_ADMIN_ADDR": f"127.0.0.1:{daemon.ports['admin']}"},
                           capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["IDENTITY", "STATE", "SERIAL"]
    assert row.split()[:3] == [CART, "Available", entry["certChain"][0]["serialNumber"]]
    # A daemon whose admin port PROXY_CONFIG moved is found the same way by `ztunnel certs`.
    moved = subprocess.run([ZTUNNEL, "certs"], env={"PROXY_CONFIG": f'{{"proxyAdminPort": {daemon.ports["admin"]}}}'},
                           capture_output=True, text=True, timeout=30)
    assert moved.returncode == 0 and moved.stdout == table.stdout, moved.stderr

    metrics = http(daemon.ports["stats"], "/metrics")[1]
    expiry = [line for line in metrics.splitlines() if line.startswith("ztunnel_certificate_expiry_seconds{")]
    assert len(expiry) == 1 and CART in expiry[0] and 3000 < int(expiry[0].split()[-1]) <= 3600
    assert f'ztunnel_certificate_renewal_failures_total{{identity="{CART}"}} 0' in metrics


def test_certificates_come_back_after_the_certworker_restarts(start_daemon, tmp_path):
    import os
    import signal
    daemon, _ = start(start_daemon, tmp_path, SECRET_TTL="1h")
    daemon.wait_ready()
    wait_for(lambda: issued(daemon, CART), 30, "the cart certificate")
    (old,) = daemon.workers("cert-worker")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: len(issued(daemon, CART)) == 2, 30, "a certificate from the new CertWorker")
    sans, _ = wait_for(lambda: try_handshake(daemon.ports["inbound"], str(tmp_path / "client")), 30, "a handshake")
    assert sans == [CART]


def test_a_refused_identity_holds_neither_readiness_nor_connections(start_daemon, tmp_path):
    """A local workload the CA refuses (another trust domain than the self-signed built-in CA's) is reported
    `Unavailable: refused` in /config_dump and does not keep the daemon unready; the workload the
    CA serves gets its certificate and readiness waits for that one only (issue #8)."""
    foreign = LOCAL_CONFIG.replace("""  serviceAccount: web
  trustDomain: cluster.local
  workloadIps: ["10.10.2.10"]
  protocol: HBONE
  node: node-b""", """  serviceAccount: web
  trustDomain: other.example
  workloadIps: ["10.10.2.10"]
  protocol: HBONE
  node: node-a""")
    assert foreign != LOCAL_CONFIG
    # The self-signed built-in CA (no ZTUNNEL_CA_DIR) issues for TRUST_DOMAIN only.
    daemon = start_daemon(extra_env={"NODE_NAME": "node-a", "SECRET_TTL": "1h"})
    with open(daemon.env["LOCAL_XDS_PATH"], "w") as f:
        f.write(foreign)
    daemon.wait_ready()
    states = {c["identity"]: c["state"] for c in daemon.config_dump()["certificates"]}
    assert states[CART] == "Available", states
    web = "spiffe://other.example/ns/shop/sa/web"
    assert states[web].startswith("Unavailable: refused"), states
    assert http(daemon.ports["readiness"], "/healthz/ready") == (200, "ready\n")
