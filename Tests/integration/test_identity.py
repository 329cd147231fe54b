"""Workload identity through key handles: the NetWorker completes mTLS handshakes while only the
CertWorker holds the private key."""
import os
import re
import signal
import socket
import ssl
import threading

from cryptography.hazmat.primitives import serialization

from daemon import wait_for
from identities import MiniCA, serving_config


def handshake(port, client_dir, timeout=5, certificate=True):
    """Opens an HBONE-style mTLS connection (TLS 1.3, ALPN h2, client certificate unless told
    not to); returns the server's SPIFFE ids and the negotiated ALPN, or raises."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # HBONE verifies the SPIFFE id, not a host name
    context.load_verify_locations(os.path.join(client_dir, "root-cert.pem"))
    if certificate:
        context.load_cert_chain(os.path.join(client_dir, "cert-chain.pem"), os.path.join(client_dir, "key.pem"))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw) as tls:
            sans = [value for kind, value in tls.getpeercert().get("subjectAltName", ()) if kind == "URI"]
            return sans, tls.selected_alpn_protocol()


def try_handshake(port, client_dir):
    try:
        return handshake(port, client_dir)
    except (OSError, ssl.SSLError):
        return None


def memory_contains(pid, needles):
    """Which of `needles` occur anywhere in the readable memory of pid (read as root)."""
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as memory:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or line.rstrip().endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                memory.seek(start)
                data = memory.read(end - start)
            except OSError:
                continue
            found.update(i for i, needle in enumerate(needles) if needle in data)
    return found


def key_needles(key):
    """What a memory scan looks for: the scalar as DER/PEM carry it (big-endian) and as an
    OpenSSL BIGNUM holds it on a little-endian machine (64-bit words, least significant first:
    the bytes reversed), the PKCS#8 DER, and a PEM marker. The first two are the key itself."""
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return [scalar, scalar[::-1], pkcs8, b"PRIVATE KEY-----"]


def start_with_identity(start_daemon, tmp_path):
    ca = MiniCA()
    server_id, server_key = ca.issue(str(tmp_path / "identities" / "server"), "server")
    ca.issue(str(tmp_path / "client"), "client")
    # Clients the server must refuse although their certificates come from its own CA.
    ca.issue(str(tmp_path / "other-domain"), "client", trust_domain="other.example")
    ca.issue(str(tmp_path / "expired"), "client", expired=True)
    daemon = start_daemon(local_config=serving_config(), extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities")})
    daemon.wait_ready()
    return daemon, server_id, server_key


def test_mtls_through_a_key_handle_and_no_key_in_the_networker(start_daemon, tmp_path):
    daemon, server_id, server_key = start_with_identity(start_daemon, tmp_path)
    client = str(tmp_path / "client")
    sans, alpn = wait_for(lambda: try_handshake(daemon.ports["inbound"], client), 30, "an mTLS handshake on 15008")
    assert sans == [server_id] and alpn == "h2"
    wait_for(lambda: "peer_identity=spiffe://cluster.local/ns/default/sa/client" in daemon.log(), 10,
             "the server to log the client's identity")

    needles = key_needles(server_key)
    (net,) = daemon.workers("net-worker")
    (cert,) = daemon.workers("cert-worker")
    assert memory_contains(net, needles) == set(), "the NetWorker holds private key material"
    # The same scan finds the key where it lives: the scan works.
    assert memory_contains(cert, needles) & {0, 1}

    (loaded,) = daemon.audit_events("certificate_loaded")
    assert loaded["identity"] == server_id and loaded["role"] == "cert-worker" and loaded["serial"]


def test_handshakes_resume_after_the_certworker_is_replaced(start_daemon, tmp_path):
    """CertWorker kill -9 under a handshake loop heals without restarting any NetWorker
    (issue #6): the signer channel is replaced, the identities come back, handshakes resume."""
    daemon, server_id, _ = start_with_identity(start_daemon, tmp_path)
    client = str(tmp_path / "client")
    wait_for(lambda: try_handshake(daemon.ports["inbound"], client), 30, "the first handshake")
    networkers = daemon.workers("net-worker")
    outcomes = []
    stop = threading.Event()

    def loop():
        while not stop.is_set() and len(outcomes) < 5000:
            outcomes.append(try_handshake(daemon.ports["inbound"], client) is not None)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        wait_for(lambda: sum(outcomes) >= 5, 30, "handshakes before the kill")
        (old,) = daemon.workers("cert-worker")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: daemon.workers("cert-worker") not in ([], [old]) and daemon.ready(), 30, "a new CertWorker")
        after = len(outcomes)
        wait_for(lambda: sum(outcomes[after:]) >= 5, 30, "handshakes after the restart")
    finally:
        stop.set()
        thread.join(timeout=60)
    sans, _ = handshake(daemon.ports["inbound"], client)
    assert sans == [server_id]
    assert daemon.workers("net-worker") == networkers  # no NetWorker was restarted
    assert len(daemon.audit_events("certificate_loaded")) == 2
    assert not any(e["role"] == "net-worker" for e in daemon.audit_events("worker_exit"))
    assert not daemon.audit_events("signer_violation")


def test_a_client_from_another_ca_is_refused(start_daemon, tmp_path):
    daemon, _, _ = start_with_identity(start_daemon, tmp_path)
    wait_for(lambda: try_handshake(daemon.ports["inbound"], str(tmp_path / "client")), 30, "a good handshake")
    stranger = MiniCA()
    stranger.issue(str(tmp_path / "stranger"), "client")
    # Trust the daemon's root so that only the daemon's check of our certificate can fail.
    with open(tmp_path / "client" / "root-cert.pem", "rb") as f:
        (tmp_path / "stranger" / "root-cert.pem").write_bytes(f.read())

    wait_for(lambda: "mTLS established" in daemon.log(), 10, "the server to log the good handshake")
    established = daemon.log().count("mTLS established")
    try:
        handshake(daemon.ports["inbound"], str(tmp_path / "stranger"))
    except (OSError, ssl.SSLError):
        pass  # refused before our side finished: fine
    # TLS 1.3: the client may finish before the server's verdict arrives, so the verdict is read
    # from the server's log.
    wait_for(lambda: "TLS handshake failed" in daemon.log(), 10, "the server to refuse the handshake")
    assert daemon.log().count("mTLS established") == established
    # Every MiniCA has the same name, so the daemon's own root is the issuer it finds: the
    # refusal comes from checking the signature with that root's public key (decoded through
    # CKeyHandle_decode_ec_public_keys_directly), not from a missing issuer.
    refusal = [l for l in daemon.log().splitlines() if "TLS handshake failed" in l][-1]
    assert "certificate signature failure" in refusal, refusal


def test_clients_without_a_valid_identity_are_refused_and_the_worker_keeps_serving(start_daemon, tmp_path):
    """§5.1: no client certificate, a SPIFFE id in another trust domain, an expired certificate:
    each handshake is refused with its reason in the log, and good clients are still served."""
    daemon, _, _ = start_with_identity(start_daemon, tmp_path)
    wait_for(lambda: try_handshake(daemon.ports["inbound"], str(tmp_path / "client")), 30, "a good handshake")
    wait_for(lambda: "mTLS established" in daemon.log(), 10, "the server to log the good handshake")
    cases = [
        (dict(client_dir=str(tmp_path / "client"), certificate=False), "peer did not return a certificate"),
        (dict(client_dir=str(tmp_path / "other-domain")), "client identity spiffe://other.example/ns/default/sa/client "
                                                          "is not in our trust domain"),
        (dict(client_dir=str(tmp_path / "expired")), "certificate has expired"),
    ]
    for kwargs, reason in cases:
        failures = daemon.log().count("TLS handshake failed")
        established = daemon.log().count("mTLS established")
        try:
            handshake(daemon.ports["inbound"], **kwargs)
        except (OSError, ssl.SSLError):
            pass  # refused before our side finished: fine
        wait_for(lambda: daemon.log().count("TLS handshake failed") > failures, 10, f"the refusal ({reason})")
        refusal = [l for l in daemon.log().splitlines() if "TLS handshake failed" in l][-1]
        assert reason in refusal, refusal
        assert daemon.log().count("mTLS established") == established
    assert try_handshake(daemon.ports["inbound"], str(tmp_path / "client"))


def test_a_pending_signature_does_not_block_the_event_loop(start_daemon, tmp_path):
    """SSL_MODE_ASYNC: while a handshake waits for the CertWorker's signature, the same event
    loop serves other connections; the handshake fails at the signing deadline, and handshakes
    work again once the CertWorker answers."""
    from daemon import http
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "server")
    ca.issue(str(tmp_path / "client"), "client")
    daemon = start_daemon(local_config=serving_config(), extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"),
                                     "ZTUNNEL_WORKER_THREADS": "1",  # one event loop for everything
                                     "RUST_LOG": "debug"})
    daemon.wait_ready()
    client = str(tmp_path / "client")
    wait_for(lambda: try_handshake(daemon.ports["inbound"], client), 30, "a first handshake")
    (cert,) = daemon.workers("cert-worker")
    os.kill(cert, signal.SIGSTOP)  # the CertWorker cannot answer
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing)
        with socket.create_connection(("127.0.0.1", daemon.ports["inbound"]), timeout=10) as raw:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())  # ClientHello
            # The server pauses the handshake for the signature of its CertificateVerify, which the
            # stopped CertWorker cannot give.
            wait_for(lambda: "handshake paused for signature request" in daemon.log(), 10, "the paused handshake")
            status, _ = http(daemon.ports["readiness"], "/healthz/ready", timeout=10)
            assert status == 200
            # Answered before the signing deadline: the event loop was not blocked by the wait
            # (a blocking sign would first have timed out and logged it).
            log = daemon.log()
            assert "missed its deadline" not in log and "timed out" not in log
            wait_for(lambda: "missed its deadline" in daemon.log(), 10, "the signing deadline")
    finally:
        os.kill(cert, signal.SIGCONT)
    sans, _ = wait_for(lambda: try_handshake(daemon.ports["inbound"], client), 30, "a handshake after SIGCONT")
    assert sans
    # Stopped and continued, the CertWorker resumed its wait (restart_syscall) rather than being
    # killed by its sandbox.
    assert daemon.workers("cert-worker") == [cert] and not daemon.audit_events("worker_exit")


def test_a_client_that_offers_only_p256_key_shares_completes_the_handshake(start_daemon, tmp_path):
    """ECDHE on P-256 (a FIPS-mode peer offers nothing else) as well as X25519: the EC key
    engine (`CKeyHandle_decode_ec_public_keys_directly`) must leave ephemeral EC keys working."""
    import subprocess
    daemon, server_id, _ = start_with_identity(start_daemon, tmp_path)
    client = str(tmp_path / "client")
    wait_for(lambda: try_handshake(daemon.ports["inbound"], client), 30, "an mTLS handshake on 15008")
    for group in ("P-256", "X25519"):
        done = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{daemon.ports['inbound']}", "-tls1_3", "-groups", group,
             "-alpn", "h2", "-CAfile", f"{client}/root-cert.pem", "-cert", f"{client}/cert-chain.pem",
             "-key", f"{client}/key.pem", "-verify_return_error", "-brief"],
            input=b"", capture_output=True, timeout=30)
        output = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode == 0 and "CONNECTION ESTABLISHED" in output, f"{group}:\n{output}"
        expected = r"(ECDH, )?(prime256v1|P-256)" if group == "P-256" else "X25519"
        assert re.search(rf"(Server|Peer) Temp Key: {expected}\b", output), output
