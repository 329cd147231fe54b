"""CRL_PATH (ISTIO_COMPAT §18, §15.1): certificate revocation lists checked against every mTLS
peer's chain at the handshake, and again on live HBONE connections whenever the file changes;
revoked peers are refused or cut (`CERT_REVOKED`) and counted in
`istio_crl_policy_rejections_total`. The lists are made by the test's own CA (Python's
`cryptography`), the client is Python's ssl and h2."""
import os
import signal
import socket
import ssl
import time

import pytest

pytest.importorskip("h2")
from daemon import http, wait_for  # noqa: E402
from hbone_client import HBONEClient  # noqa: E402
from identities import MiniCA  # noqa: E402
from test_hbone_inbound import config  # noqa: E402
from test_restart import replaced  # noqa: E402


def write_atomically(path, data):
    """As a ConfigMap update does: the new file replaces the old one whole."""
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)


def handshake_refused(daemon, client_dir):
    """Whether 15008 refuses this client: TLS 1.3 lets the client finish first, so the refusal
    may come as an error on the handshake or as the connection ending before any answer."""
    try:
        client = HBONEClient(daemon.ports["inbound"], client_dir)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    try:
        stream = client.connect("127.0.0.1:1")
        return not client.pump(lambda: stream in client.status)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    finally:
        try:
            client.sock.close()
        except OSError:
            pass


def closed_within(client, seconds):
    """Whether the server ends the connection within `seconds` (PINGs and all read meanwhile)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            if not client._read_once():
                return True
        except socket.timeout:
            return False
        except (ssl.SSLError, ConnectionError, OSError):
            return True
    return False


def rejections(daemon, reporter):
    body = http(daemon.ports["stats"], "/metrics")[1]
    line = next(l for l in body.splitlines() if l.startswith(f'istio_crl_policy_rejections_total{{reporter="{reporter}"}}'))
    return int(line.rsplit(" ", 1)[1])


@pytest.fixture
def revocable(start_daemon, tmp_path, echo_server):
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "client"), "client")
    ca.issue(str(tmp_path / "revoked"), "client")
    crl = str(tmp_path / "crl" / "ca-crl.pem")
    os.makedirs(os.path.dirname(crl))
    write_atomically(crl, ca.revocation_list([MiniCA.serial(str(tmp_path / "revoked"))]))
    daemon = start_daemon(local_config=config(echo_server.port),
                          extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), "CRL_PATH": crl})
    return daemon, tmp_path, echo_server, ca, crl


def test_a_revoked_client_is_refused_and_a_live_one_cut_when_the_list_revokes_it(revocable):
    """A client whose certificate the list names is refused at the handshake (the reason in the
    log, counted under reporter `destination`); a client the list does not name is served. When
    the file changes to name that client too, its live connection is closed (its stream's
    access-log line gives the reason, its metrics `response_flags="CERT_REVOKED"`) and it is
    refused from then on. A file that no longer
    parses leaves the lists in force."""
    daemon, tmp, echo, ca, crl = revocable
    daemon.wait_ready()
    wait_for(lambda: "revocation lists in force" in daemon.log(), 30, "the lists in force")
    assert handshake_refused(daemon, str(tmp / "revoked"))
    wait_for(lambda: "peer certificate revoked (serial " in daemon.log(), 10, "the refusal logged")
    assert rejections(daemon, "destination") == 1 and rejections(daemon, "source") == 0

    client = HBONEClient(daemon.ports["inbound"], str(tmp / "client"))
    try:
        stream = client.connect(f"127.0.0.1:{echo.port}")
        assert client.pump(lambda: stream in client.status) and client.status[stream] == 200
        client.send(stream, b"before")
        assert client.pump(lambda: client.data[stream] == b"before")
        both = [MiniCA.serial(str(tmp / "revoked")), MiniCA.serial(str(tmp / "client"))]
        write_atomically(crl, ca.revocation_list(both))
        # Closed by the NetWorker once the new lists are in force (the Supervisor looks at the
        # file every 2 s and sends it once seen the same twice): the stream never ends cleanly.
        assert closed_within(client, 30)
        assert stream not in client.ended or stream in client.reset
    finally:
        client.close()
    wait_for(lambda: "connection closed: the peer's certificate is revoked" in daemon.log(), 10, "the cut logged")
    wait_for(lambda: "error=peer certificate revoked" in daemon.log(), 10, "the stream's access-log line")
    line = next(l for l in daemon.log().splitlines() if "\taccess\tconnection complete" in l and "error=peer certificate revoked" in l)
    assert "src.identity=spiffe://cluster.local/ns/default/sa/client" in line, line
    closed = [l for l in http(daemon.ports["stats"], "/metrics")[1].splitlines() if l.startswith("istio_tcp_connections_closed_total{")]
    assert [l for l in closed if 'response_flags="CERT_REVOKED"' in l and l.endswith(" 1")], closed
    assert rejections(daemon, "destination") == 2
    assert handshake_refused(daemon, str(tmp / "client"))

    write_atomically(crl, b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    wait_for(lambda: daemon.audit_events("crl_refused"), 30, "the bad file refused")
    assert "CRL_PATH generation 3 refused: PEM block 1 of 1 is no X509 CRL that parses" in daemon.log()
    assert handshake_refused(daemon, str(tmp / "client")) and daemon.ready()
    events = [e["generation"] for e in daemon.audit_events("crl_changed")]
    assert events == [1, 2, 3], events
    assert [e["generation"] for e in daemon.audit_events("crl_refused")] == [3]
    # A NetWorker started after the bad edit gets the lists the others keep (generation 2), not
    # the bytes they refused: it is ready and still refuses the revoked client.
    (old,) = daemon.workers("net-worker")
    os.kill(old, signal.SIGKILL)
    replaced(daemon, "net-worker", old)
    wait_for(lambda: daemon.log().count("revocation lists in force generation=2") >= 2, 30, "generation 2 in the new NetWorker")
    assert daemon.ready() and handshake_refused(daemon, str(tmp / "client"))


def test_a_list_that_does_not_parse_at_start_refuses_every_peer_until_one_does(start_daemon, tmp_path, echo_server):
    """CRL_PATH is set but its lists do not parse: accepting certificates unchecked would fail
    open, so every peer is refused and readiness names the lists; a file that parses puts them
    in force and the client is served."""
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "client"), "client")
    crl = str(tmp_path / "ca-crl.pem")
    write_atomically(crl, ca.root_pem)  # a certificate, not a list: CRL_PATH pointed at the wrong file
    daemon = start_daemon(local_config=config(echo_server.port),
                          extra_env={"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), "CRL_PATH": crl})
    wait_for(lambda: "CRL_PATH generation 1 refused" in daemon.log(), 30, "the list refused")
    status, body = http(daemon.ports["readiness"], "/healthz/ready")[:2]
    assert status == 500 and "revocation lists (CRL_PATH holds no revocation list that parses" in body, body
    wait_for(lambda: "identity available" in daemon.log(), 30, "the server identity")
    assert handshake_refused(daemon, str(tmp_path / "client"))
    write_atomically(crl, ca.revocation_list([]))
    daemon.wait_ready()
    assert not handshake_refused(daemon, str(tmp_path / "client"))


def test_a_server_whose_certificate_is_revoked_is_cut_from_the_pool_and_refused(start_daemon, tmp_path):
    """The other direction, reporter `source`: the pool checks the server's chain. A tunnel to
    echo's ztunnel (here the same daemon's 15008, local mode) carries bytes; once the lists name
    the certificate echo's ztunnel presents (issued by the plugged-in CA, its serial read from
    the audit), the pooled connection is closed under the live stream, and a new tunnel is
    refused at the handshake."""
    from daemon import EchoServer, socks5_connect
    from test_outbound_hbone import ECHO_ID, open_tunnel, round_trip, start
    echo = EchoServer(host="127.0.0.2")
    try:
        ca = MiniCA()
        ca.write_cacerts(str(tmp_path / "cacerts"))
        crl = str(tmp_path / "ca-crl.pem")
        write_atomically(crl, b"")  # empty: nothing revoked
        daemon, _ = start(start_daemon, echo.port, extra_env={
            "ZTUNNEL_CA_DIR": str(tmp_path / "cacerts"), "CRL_PATH": crl, "UNSTABLE_ENABLE_SOCKS5": "true"})
        with open_tunnel(daemon, b"live") as sock:
            serial = next(int(e["serial"], 16) for e in daemon.audit_events("certificate_issued") if e["identity"] == ECHO_ID)
            write_atomically(crl, ca.revocation_list([serial]))
            sock.settimeout(30)
            try:
                assert sock.recv(16) == b""
            except ConnectionResetError:
                pass  # cut, as a reset: the application must not take it for a clean end
        wait_for(lambda: any("connection closed: the peer's certificate is revoked" in l and "reporter=source" in l
                             for l in daemon.log().splitlines()), 10, "the pooled connection cut")
        assert rejections(daemon, "source") == 1
        sock, code = socks5_connect(daemon.ports["socks5"], 80, "10.96.0.9", source="127.0.0.3")
        with sock:
            sock.settimeout(30)
            try:
                refused = code != 0 or round_trip(sock, b"again") != b"again"
            except (ConnectionError, OSError):
                refused = True
        assert refused
        wait_for(lambda: rejections(daemon, "source") == 2, 10, "the new handshake refused and counted")
        assert any("outbound: TLS handshake failed" in l and "reason=peer certificate revoked" in l for l in daemon.log().splitlines())
    finally:
        echo.close()



def test_a_missing_file_revokes_nothing_until_it_appears_and_an_unreadable_one_refuses_every_peer(start_daemon, tmp_path,
                                                                                                  echo_server):
    """As upstream, a CRL_PATH that does not exist yet (a ConfigMap mounted later) revokes
    nothing, and lists that appear are put in force. A file that exists but cannot be read (here:
    over the 16 MiB bound) is not "nothing revoked": every peer is refused and readiness says
    so, until it can be read."""
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "client"), "client")
    env = {"ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities")}
    missing = str(tmp_path / "later" / "ca-crl.pem")
    daemon = start_daemon(local_config=config(echo_server.port), extra_env={**env, "CRL_PATH": missing})
    daemon.wait_ready()
    wait_for(lambda: "identity available" in daemon.log(), 30, "the server identity")
    assert not handshake_refused(daemon, str(tmp_path / "client"))
    os.makedirs(os.path.dirname(missing))
    write_atomically(missing, ca.revocation_list([MiniCA.serial(str(tmp_path / "client"))]))
    wait_for(lambda: "revocation lists in force generation=2" in daemon.log(), 30, "the lists that appeared in force")
    assert handshake_refused(daemon, str(tmp_path / "client"))

    huge = str(tmp_path / "huge-crl.pem")
    write_atomically(huge, b"x" * (16 * 1024 * 1024 + 1))
    daemon = start_daemon(local_config=config(echo_server.port), extra_env={**env, "CRL_PATH": huge})
    wait_for(lambda: "cannot read CRL_PATH" in daemon.log(), 30, "the unreadable file said")
    wait_for(lambda: "identity available" in daemon.log(), 30, "the server identity")
    status, body = http(daemon.ports["readiness"], "/healthz/ready")[:2]
    assert status == 500 and "no revocation list is in force yet" in body, body
    assert handshake_refused(daemon, str(tmp_path / "client"))
    write_atomically(huge, ca.revocation_list([]))
    daemon.wait_ready()
    assert not handshake_refused(daemon, str(tmp_path / "client"))


def test_rejections_are_one_sum_whichever_networker_answers_the_scrape(start_daemon, tmp_path, echo_server):
    """With two NetWorkers, a refused handshake is counted by the one that refused it, and every
    scrape of 15020 (answered by either) shows the merged sum, once (§15), as soon as the
    counting NetWorker published it (at most a second)."""
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "revoked"), "client")
    crl = str(tmp_path / "ca-crl.pem")
    write_atomically(crl, ca.revocation_list([MiniCA.serial(str(tmp_path / "revoked"))]))
    daemon = start_daemon(local_config=config(echo_server.port), extra_env={
        "ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), "CRL_PATH": crl, "ZTUNNEL_NET_WORKERS": "2"})
    daemon.wait_ready()
    wait_for(lambda: daemon.log().count("identity available") >= 2, 30, "the server identity in both NetWorkers")
    for _ in range(3):
        assert handshake_refused(daemon, str(tmp_path / "revoked"))
    wait_for(lambda: daemon.log().count("peer certificate revoked (serial ") >= 3, 10, "three refusals")
    # Each NetWorker publishes its counters into its shared region once a second (and before
    # answering a scrape): the sum is there within a second, then every scrape shows it.
    line = 'istio_crl_policy_rejections_total{reporter="destination"} 3'
    wait_for(lambda: line in http(daemon.ports["stats"], "/metrics")[1].splitlines(), 10, "the merged sum")
    for _ in range(8):  # scrapes land on either NetWorker
        body = http(daemon.ports["stats"], "/metrics")[1]
        lines = [l for l in body.splitlines() if l.startswith('istio_crl_policy_rejections_total{reporter="destination"}')]
        assert lines == ['istio_crl_policy_rejections_total{reporter="destination"} 3'], lines


def test_a_networker_lying_that_bad_lists_are_in_force_makes_later_ones_fail_closed(start_daemon, tmp_path, echo_server):
    """The threat model's claim about a compromised NetWorker (it can answer `revocationsApplied`
    as it likes): saying "accepted" for a generation every NetWorker refused makes the Supervisor
    hand those bytes to the NetWorkers started later, which cannot parse them either and so
    refuse every peer (readiness names the lists): fail closed, never open. Fault probe
    `crl-accept` (the generation as `port`)."""
    ca = MiniCA()
    ca.issue(str(tmp_path / "identities" / "server"), "echo", namespace="shop")
    ca.issue(str(tmp_path / "client"), "client")
    crl = str(tmp_path / "ca-crl.pem")
    write_atomically(crl, ca.revocation_list([]))
    daemon = start_daemon(local_config=config(echo_server.port), extra_env={
        "ZTUNNEL_STATIC_IDENTITY_DIR": str(tmp_path / "identities"), "CRL_PATH": crl, "ZTUNNEL_DEBUG_FAULT_INJECTION": "true"})
    daemon.wait_ready()
    wait_for(lambda: "identity available" in daemon.log(), 30, "the server identity")
    assert not handshake_refused(daemon, str(tmp_path / "client"))

    write_atomically(crl, b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    wait_for(lambda: daemon.audit_events("crl_refused"), 30, "generation 2 refused")
    assert not handshake_refused(daemon, str(tmp_path / "client")), "the lists in force stay"
    assert http(daemon.ports["admin"], "/debug/fault?kind=crl-accept&port=2", method="POST")[0] == 200
    wait_for(lambda: "fault crl-accept: sent" in daemon.log(), 10, "the lie sent")

    (old,) = daemon.workers("net-worker")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: (lambda pids: pids and old not in pids)(daemon.workers("net-worker")), 30, "a new NetWorker")
    # The new NetWorker was handed generation 2 as the lists in force: none parses, none in force.
    wait_for(lambda: "CRL_PATH generation 2 refused: PEM block 1 of 1 is no X509 CRL that parses; CRL_PATH holds no "
             "revocation list that parses" in daemon.log(), 30, "the new NetWorker refusing generation 2 with no lists in force")
    wait_for(lambda: (lambda r: r[0] == 500 and "revocation lists" in r[1])(http(daemon.ports["readiness"], "/healthz/ready")),
             30, "readiness naming the revocation lists")
    assert handshake_refused(daemon, str(tmp_path / "client")), "fail closed: no peer accepted unchecked"
