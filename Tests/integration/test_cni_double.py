"""Self-tests of the CNI double (cni_double.py): its protobuf bytes against bytes written by hand
from ISTIO_COMPAT §7.4, and its side of §8 against a fake ztunnel written here (no daemon)."""
import array
import os
import select
import socket
import threading
import time

import pytest

import cni_double as z
from cni_double import CniDouble, ZdsError
from daemon import wait_for

NETNS = "/proc/self/ns/net"  # any network namespace handle will do for the double's side


# -- bytes by hand -----------------------------------------------------------------------------
# tag byte = field << 3 | wire type (0 varint, 2 length-delimited)

def test_hello_is_field_1_varint_1():
    assert z.encode_hello(z.V1) == bytes([0x08, 0x01])
    assert z.decode_hello(bytes([0x08, 0x01])) == z.V1
    assert z.decode_hello(b"") == z.VERSION_NOT_USED
    with pytest.raises(ValueError):
        z.decode_hello(bytes([0x0A, 0x00]))  # a WorkloadResponse{ack}, not a hello


def test_workload_info_fields_1_2_3():
    assert z.encode_workload_info("pod-a", "ns", "sa") == (
        b"\x0a\x05pod-a"  # name = 1
        b"\x12\x02ns"  # namespace = 2
        b"\x1a\x02sa")  # service_account = 3


def test_add_is_request_field_1_with_uid_1_and_info_2():
    info = b"\x0a\x01p\x12\x01n\x1a\x01s"
    assert z.encode_workload_info("p", "n", "s") == info
    add = b"\x0a\x02u1" + b"\x12" + bytes([len(info)]) + info
    assert z.encode_add("u1", info) == b"\x0a" + bytes([len(add)]) + add
    assert z.encode_add("u1", info) == bytes.fromhex("0a 0f 0a 02 75 31 12 09 0a 01 70 12 01 6e 1a 01 73")
    assert z.encode_add("u1") == bytes.fromhex("0a 04 0a 02 75 31")  # without workload_info


def test_del_is_request_field_2_with_uid_field_2():
    assert z.encode_del("u1") == bytes.fromhex("12 04 12 02 75 31")


def test_snapshot_sent_is_request_field_3_empty():
    assert z.encode_snapshot_sent() == bytes.fromhex("1a 00")


def test_keep_is_request_field_5_with_uid_1():
    assert z.encode_keep("u1") == bytes.fromhex("2a 04 0a 02 75 31")


def test_ack_is_response_field_1_with_error_1():
    assert z.decode_response(bytes.fromhex("0a 00")) == ""
    assert z.decode_response(bytes.fromhex("0a 06 0a 04") + b"boom") == "boom"
    assert z.encode_ack("") == bytes.fromhex("0a 00")
    assert z.encode_ack("boom") == bytes.fromhex("0a 06 0a 04") + b"boom"
    for bad in (b"", bytes.fromhex("12 00"), bytes.fromhex("0a 05 0a"), bytes.fromhex("08 01")):
        with pytest.raises(ValueError):
            z.decode_response(bad)


def test_lengths_over_127_take_two_varint_bytes():
    name = "n" * 200
    assert z.encode_workload_info(name, "", "") == b"\x0a\xc8\x01" + name.encode()
    assert z.varint(300) == b"\xac\x02"


def test_decode_request_round_trips():
    info = z.encode_workload_info("p", "n", "s")
    assert z.decode_request(z.encode_add("u", info)) == ("add", "u", {"name": "p", "namespace": "n",
                                                                      "service_account": "s"})
    assert z.decode_request(z.encode_add("u")) == ("add", "u", None)
    assert z.decode_request(z.encode_del("u")) == ("del", "u", None)
    assert z.decode_request(z.encode_keep("u")) == ("keep", "u", None)
    assert z.decode_request(z.encode_snapshot_sent()) == ("snapshot_sent", None, None)


# -- against a fake ztunnel --------------------------------------------------------------------

class FakeZtunnel:
    """Connects (and reconnects on EOF), says hello, records each request with its fds' details,
    answers with `respond(kind, uid, info, fds) -> bytes or None` (None: no answer)."""

    def __init__(self, path, respond=None, hello=z.encode_hello(z.V1), reconnect=True):
        self.path, self.hello, self.reconnect = path, hello, reconnect
        self.respond = respond or (lambda *a: z.encode_ack(""))
        self.received = []  # (connection number, kind, uid, info, [(nstype, inode)])
        self.connections = 0
        self.stopped = False
        self.sock = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                time.sleep(0.01)
                continue
            self.sock = sock
            self.connections += 1
            sock.sendmsg([self.hello])
            while not self.stopped:
                if not select.select([sock], [], [], 0.05)[0]:
                    continue
                try:
                    data, anc, flags, _ = sock.recvmsg(1024, socket.CMSG_SPACE(16))
                except OSError:
                    break
                if not data:
                    break
                fds = []
                for _, _, cdata in anc:
                    fds.extend(array.array("i", cdata))
                details = [(z.netns_type(fd), os.fstat(fd).st_ino) for fd in fds]
                kind, uid, info = z.decode_request(data)
                self.received.append((self.connections, kind, uid, info, details))
                answer = self.respond(kind, uid, info, details)
                for fd in fds:
                    os.close(fd)
                if answer is not None:
                    sock.sendmsg([answer])
            sock.close()
            if not self.reconnect:
                return

    def stop(self):
        self.stopped = True
        self.thread.join(timeout=5)


@pytest.fixture
def double():
    cni = CniDouble(ack_timeout=1.0)
    cni.start()
    fakes = []
    cni.fakes = fakes
    yield cni
    for fake in fakes:
        fake.stop()
    cni.stop()
    assert not os.path.exists(cni.path), "stop() leaves no socket file"


def fake(double, **kwargs):
    f = FakeZtunnel(double.path, **kwargs)
    double.fakes.append(f)
    return f


def test_hello_then_add_with_one_netns_fd_then_snapshot(double):
    ztunnel = fake(double)
    double.wait_connected(5)
    assert double.hello_received
    assert double.add("uid-1", NETNS, "pod-a", "ns", "sa-a") == ""
    assert double.snapshot_sent() == ""
    assert double.acks == ["", ""]
    _, kind, uid, info, fds = ztunnel.received[0]
    assert (kind, uid, info) == ("add", "uid-1", {"name": "pod-a", "namespace": "ns", "service_account": "sa-a"})
    assert fds == [(z.CLONE_NEWNET, os.stat(NETNS).st_ino)], "exactly one fd, of the pod's netns"
    assert ztunnel.received[1][1:] == ("snapshot_sent", None, None, [])
    assert double.probe(), "ztunnel sent nothing unsolicited"
    assert double.history == [(1, "add", "uid-1", ""), (1, "snapshot_sent", None, "")]


def test_keep_and_delete_carry_no_fd(double):
    ztunnel = fake(double)
    double.wait_connected(5)
    assert double.keep("k") == "" and double.delete("d") == ""
    assert [r[1:] for r in ztunnel.received] == [("keep", "k", None, []), ("del", "d", None, [])]


def test_error_acks_are_recorded(double):
    fake(double, respond=lambda kind, uid, info, fds: z.encode_ack("failure to start proxy : busy"))
    double.wait_connected(5)
    assert double.add("u", NETNS, "p", "n", "s").startswith("failure to start proxy")
    assert double.acks == ["failure to start proxy : busy"]


def test_a_missing_ack_fails_after_the_timeout(double):
    fake(double, respond=lambda *a: None)
    double.wait_connected(5)
    started = time.monotonic()
    with pytest.raises(ZdsError, match="no message"):
        double.snapshot_sent()
    assert 0.9 <= time.monotonic() - started < 3


def test_a_response_that_is_not_an_ack_is_a_protocol_error(double):
    fake(double, respond=lambda *a: z.encode_hello())
    double.wait_connected(5)
    with pytest.raises(ZdsError, match="not a WorkloadResponse"):
        double.snapshot_sent()


def test_no_hello_no_connection(double):
    fake(double, hello=z.encode_ack(""), reconnect=False)
    wait_for(lambda: double.errors, 5, "the refused connection")
    assert double.connections == 0 and not double.connected
    assert "not a ZdsHello" in double.errors[0]


def test_send_raw_with_fds(double):
    ztunnel = fake(double)
    double.wait_connected(5)
    fd = os.open(NETNS, os.O_RDONLY)
    try:
        assert double.send_raw(z.encode_del("u"), fds=[fd]) == ""
    finally:
        os.close(fd)
    assert ztunnel.received[0][1:] == ("del", "u", None, [(z.CLONE_NEWNET, os.stat(NETNS).st_ino)])


def test_add_without_info_and_with_chosen_fds(double):
    ztunnel = fake(double)
    double.wait_connected(5)
    assert double.add("u", None, "p", "n", "s", fds=[], info=False, remember=False) == ""
    assert ztunnel.received[0][1:] == ("add", "u", None, [])
    assert double.pods == {}


def test_disconnect_then_replay_on_the_new_connection(double):
    ztunnel = fake(double)
    double.wait_connected(5)
    double.add("a", NETNS, "pod-a", "ns", "sa")
    double.add("b", NETNS, "pod-b", "ns", "sa")
    double.add("gone", "/nonexistent/netns", "pod-c", "ns", "sa", fds=[])  # netns cannot be opened
    double.add("dropped", NETNS, "pod-d", "ns", "sa")
    double.snapshot_sent()
    double.forget("dropped")
    double.delete("b")
    double.replay_on_connect = True
    double.disconnect()
    assert double.wait_connected(5, count=2) == 2
    assert double.wait_replayed(2, 5) == ["", "", ""]
    second = [r[1:4] for r in ztunnel.received if r[0] == 2]
    assert second == [("add", "a", {"name": "pod-a", "namespace": "ns", "service_account": "sa"}),
                      ("keep", "gone", None), ("snapshot_sent", None, None)]
    assert ztunnel.connections == 2


def test_unsolicited_messages_are_noticed(double):
    ztunnel = fake(double)
    double.wait_connected(5)
    ztunnel.sock.sendmsg([z.encode_ack("")])
    wait_for(lambda: not double.probe(), 5, "the probe to see the unsolicited message")
    assert double.unsolicited == [z.encode_ack("")]


def test_messages_over_1_kib_are_refused_before_sending():
    cni = CniDouble()
    try:
        with pytest.raises(ValueError, match="1 KiB"):
            cni._request(z.encode_keep("u" * 1100), (), "keep", "u")
    finally:
        cni.stop()
    assert not os.path.exists(os.path.dirname(cni.path))
