"""Smoke test of the mesh box (mesh_box.py), no daemon: the pods reach each other over the
bridge, istio-cni's in-pod rules capture what §2.1 says they capture (unmarked outbound onto the
client pod's 15001, inbound onto the server pod's 15006, never 15008, never 0x539-marked
outbound), and everything is gone by name afterwards."""
import os
import socket
import struct
import subprocess

import pytest

from daemon import wait_for
from mesh_box import MARK, MeshBox, in_netns

SO_ORIGINAL_DST = 80


def original_dst(conn):
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, = struct.unpack("!H", raw[2:4])
    return socket.inet_ntoa(raw[4:8]), port


@pytest.fixture
def box():
    b = MeshBox(pods=2)
    yield b
    b.cleanup()


def test_topology_and_in_pod_redirection(box):
    a, b = box.pod("a"), box.pod("b")
    assert (a.ip, b.ip) == ("10.250.0.2", "10.250.0.3")
    assert os.path.exists(a.netns_path) and os.path.exists(b.netns_path)
    for pod in (a, b):
        rules = pod.nat_rules()
        assert "-j REDIRECT --to-ports 15001" in rules and "-j REDIRECT --to-ports 15006" in rules, rules

    echo = b.echo_server(8080)
    assert 8080 in b.listeners() and 8080 not in a.listeners()
    hbone = b.echo_server(15008)

    # Outbound from a, unmarked: captured on a's own 15001, original destination kept.
    outbound = a.listen(15001)
    with outbound, a.connect(b.ip, 8080, timeout=5):
        conn, _ = outbound.accept()
        with conn:
            assert original_dst(conn) == (b.ip, 8080)

    # Marked 0x539 (as ztunnel's sockets are): not captured leaving a; the mark does not cross
    # the namespace boundary, so b's PREROUTING captures it onto 15006.
    inbound = b.listen(15006)
    with inbound, a.connect(b.ip, 8080, timeout=5, mark=MARK):
        conn, peer = inbound.accept()
        with conn:
            assert original_dst(conn) == (b.ip, 8080) and peer[0] == a.ip

    # Port 15008 is never captured inbound: a marked connection reaches b's 15008 itself.
    assert a.round_trip(b.ip, 15008, b"hbone", mark=MARK) == b"hbone"

    # Without the rules, plain pod-to-pod traffic over the bridge.
    box.unredirect(a)
    box.unredirect(b)
    payload = os.urandom(200_000)
    assert a.round_trip(b.ip, 8080, payload) == payload

    box.stop(echo.pid)
    box.stop(hbone.pid)
    wait_for(lambda: 8080 not in b.listeners(), 5, "the echo server's listener gone")


def test_a_held_port_cannot_be_bound_in_the_pod(box):
    a, b = box.pod("a"), box.pod("b")
    holder = a.hold_port(15008)
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        def bind():
            s = socket.socket(family)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind((host, 15008))
            finally:
                s.close()
        with pytest.raises(OSError) as error:
            in_netns(a.netns_path, bind)
        assert error.value.errno == 98  # EADDRINUSE
    # Only in a: the same port is free in b.
    b.listen(15008).close()
    box.stop(holder.pid)
    a.listen(15008).close()


def test_cleanup_removes_everything_by_name():
    box = MeshBox(pods=3)
    names = [box.bridge] + [p.netns for p in box.pods]
    server = box.pod("c").echo_server(9000)
    assert box.pod("c").ip == "10.250.0.4"
    box.cleanup()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in listed] and not any(os.path.exists(f"/run/netns/{n}") for n in names)
    assert server.poll() is not None
