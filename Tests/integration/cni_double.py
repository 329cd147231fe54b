"""istio-cni's node agent side of ZDS (ISTIO_COMPAT §7.4, §8), as a test double.

The node agent *listens* on a Unix SOCK_SEQPACKET socket; ztunnel connects, sends a bare
`ZdsHello{version: V1}`, then receives `WorkloadRequest`s and answers each with exactly one
`WorkloadResponse{ack}`. No framing: one protobuf message per sendmsg/recvmsg, < 1 KiB. Only an
AddWorkload carries a file descriptor (one, SCM_RIGHTS): an open handle to the pod's network
namespace. The agent sends the next request only after the previous ack (correlation is purely
positional) and waits up to 5 s for each.

Written from the spec, not from the daemon. Protobuf is encoded by hand (field numbers of §7.4).
New pod events go to the most recently connected ztunnel, as upstream does; when
`replay_on_connect` is set, every new connection gets the agent's snapshot first (Add for every
known pod whose netns opens, Keep for the others, then SnapshotSent), as the real agent does when
ztunnel (re)connects.
"""
import array
import os
import select
import socket
import tempfile
import threading
import time

from protowire import key, length_delimited, varint  # noqa: F401 (the tests import them from here)

VERSION_NOT_USED = 0
V1 = 1
MAX_MESSAGE = 1024  # both sides read into a 1024-byte buffer (§8)
ACK_TIMEOUT = 5.0  # the agent waits up to 5 s per ack (§8)
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)


class ZdsError(AssertionError):
    """ztunnel broke the protocol as the agent sees it: no ack in time, a closed connection where
    an ack was due, a response that is not a WorkloadResponse{ack}, an fd sent to the agent."""


# -- protobuf, by hand -------------------------------------------------------------------------

def string_field(field, value):
    """proto3: an empty string is the default and is not written."""
    return length_delimited(field, value.encode()) if value else b""


def parse_fields(data):
    """[(field, wire_type, value)] of one message; ValueError if it does not decode."""
    fields, i = [], 0

    def read_varint():
        nonlocal i
        shift = result = 0
        while True:
            if i >= len(data):
                raise ValueError("truncated varint")
            if shift > 63:
                raise ValueError("varint too long")
            byte = data[i]
            i += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while i < len(data):
        tag = read_varint()
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            value = read_varint()
        elif wire_type == 1:
            if i + 8 > len(data):
                raise ValueError("truncated fixed64")
            value, i = data[i:i + 8], i + 8
        elif wire_type == 2:
            size = read_varint()
            if i + size > len(data):
                raise ValueError("truncated length-delimited field")
            value, i = bytes(data[i:i + size]), i + size
        elif wire_type == 5:
            if i + 4 > len(data):
                raise ValueError("truncated fixed32")
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire_type}")
        fields.append((field, wire_type, value))
    return fields


# -- the messages (§7.4) -----------------------------------------------------------------------

def encode_hello(version=V1):
    """ZdsHello{version = 1 (enum Version)}."""
    return key(1, 0) + varint(version) if version else b""


def decode_hello(data):
    """The version of a bare ZdsHello; ValueError if the bytes are not one."""
    version = VERSION_NOT_USED
    for field, wire_type, value in parse_fields(data):
        if field != 1 or wire_type != 0:
            raise ValueError(f"unexpected field {field} (wire type {wire_type}) in a ZdsHello")
        version = value
    return version


def encode_workload_info(name, namespace, service_account):
    """WorkloadInfo{name = 1, namespace = 2, service_account = 3} (4 is reserved)."""
    return string_field(1, name) + string_field(2, namespace) + string_field(3, service_account)


def encode_add(uid, info=None):
    """WorkloadRequest{add (1): AddWorkload{uid = 1, workload_info = 2}}. `info` is the encoded
    WorkloadInfo, None to leave it out (a protocol error for ztunnel, §8.6)."""
    body = string_field(1, uid) + (length_delimited(2, info) if info is not None else b"")
    return length_delimited(1, body)


def encode_del(uid):
    """WorkloadRequest{del (2): DelWorkload{uid = **2**}}."""
    return length_delimited(2, string_field(2, uid))


def encode_snapshot_sent():
    """WorkloadRequest{snapshot_sent (3): SnapshotSent{}}."""
    return length_delimited(3, b"")


def encode_keep(uid):
    """WorkloadRequest{keep (5): KeepWorkload{uid = 1}}."""
    return length_delimited(5, string_field(1, uid))


def encode_ack(error=""):
    """WorkloadResponse{ack (1): Ack{error = 1}}: what ztunnel sends (for self-tests)."""
    return length_delimited(1, string_field(1, error))


def decode_response(data):
    """The error string of a WorkloadResponse{ack} ("" = success); ValueError if the bytes are not
    a WorkloadResponse carrying an ack."""
    ack = None
    for field, wire_type, value in parse_fields(data):
        if field == 1 and wire_type == 2:
            ack = value
        else:
            raise ValueError(f"unexpected field {field} (wire type {wire_type}) in a WorkloadResponse")
    if ack is None:
        raise ValueError("a WorkloadResponse without an ack")
    error = ""
    for field, wire_type, value in parse_fields(ack):
        if field == 1 and wire_type == 2:
            error = value.decode("utf-8")
    return error


def decode_workload_info(data):
    info = {"name": "", "namespace": "", "service_account": ""}
    names = {1: "name", 2: "namespace", 3: "service_account"}
    for field, wire_type, value in parse_fields(data):
        if field in names and wire_type == 2:
            info[names[field]] = value.decode("utf-8")
    return info


def decode_request(data):
    """(kind, uid, info) of a WorkloadRequest: kind in add/del/snapshot_sent/keep, info a dict for
    an Add that carries one (else None). For the self-tests' fake ztunnel."""
    payloads = [(f, v) for f, wt, v in parse_fields(data) if wt == 2 and f in (1, 2, 3, 5)]
    if len(payloads) != 1:
        raise ValueError("a WorkloadRequest must carry exactly one payload")
    field, body = payloads[0]
    inner = parse_fields(body)
    strings = {f: v for f, wt, v in inner if wt == 2}
    if field == 1:
        uid = strings.get(1, b"").decode("utf-8")
        return "add", uid, decode_workload_info(strings[2]) if 2 in strings else None
    if field == 2:
        return "del", strings.get(2, b"").decode("utf-8"), None
    if field == 3:
        return "snapshot_sent", None, None
    return "keep", strings.get(1, b"").decode("utf-8"), None


def netns_type(fd):
    """The namespace type of fd (CLONE_NEWNET for a network namespace), via NS_GET_NSTYPE."""
    import fcntl
    return fcntl.ioctl(fd, NS_GET_NSTYPE)


# -- the double --------------------------------------------------------------------------------

class CniDouble:
    def __init__(self, path=None, ack_timeout=ACK_TIMEOUT, replay_on_connect=False):
        """`path`: the socket path (INPOD_UDS); by default one in a fresh short temp directory
        (sun_path holds 108 bytes)."""
        self._tmpdir = None
        if path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="zds-")
            path = os.path.join(self._tmpdir, "ztunnel.sock")
        self.path = path
        self.ack_timeout = ack_timeout
        self.replay_on_connect = replay_on_connect
        self.acks = []  # every ack's error string, in order
        self.history = []  # (connection number, kind, uid, error) per acked request
        self.hellos = []  # raw bytes of every hello received
        self.errors = []  # what went wrong on accepted connections (no hello, bad hello, ...)
        self.unsolicited = []  # messages ztunnel sent when no ack was due
        self.replays = []  # {"connection": n, "acks": [...]} per automatic replay
        self.pods = {}  # uid -> {"netns_path", "name", "namespace", "service_account"}: the snapshot
        self.connections = 0  # connections that sent a valid hello
        self._current = None
        self._all = []
        self._listener = None
        self._thread = None
        self._stopped = False
        self._request_lock = threading.RLock()  # one request in flight: the next only after the ack
        self._changed = threading.Condition()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="cni-double", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopped = True
        if self._listener is not None:
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._changed:
            for conn in self._all:
                conn.close()
            self._all.clear()
            self._current = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._tmpdir:
            try:
                os.rmdir(self._tmpdir)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _accept_loop(self):
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._changed:
                self._all.append(conn)
            try:
                data = self._receive(conn, self.ack_timeout)
            except ZdsError as error:
                self._refuse(conn, f"no hello: {error}")
                continue
            self.hellos.append(data)
            try:
                version = decode_hello(data)
            except ValueError as error:
                self._refuse(conn, f"not a ZdsHello ({error}): {data.hex()}")
                continue
            if version != V1:
                self._refuse(conn, f"hello with version {version}")
                continue
            with self._changed:
                self.connections += 1
                number = self.connections
                self._current = conn
                self._changed.notify_all()
            if self.replay_on_connect:
                try:
                    acks = self.replay()
                except ZdsError as error:
                    self.errors.append(f"replay on connection {number}: {error}")
                    acks = None
                with self._changed:
                    self.replays.append({"connection": number, "acks": acks})
                    self._changed.notify_all()

    def _refuse(self, conn, why):
        self.errors.append(why)
        with self._changed:
            conn.close()
            self._all.remove(conn)

    # -- observation ------------------------------------------------------------------------

    @property
    def hello_received(self):
        """Whether the current connection began with ZdsHello{V1}."""
        if self._current is None or not self.hellos:
            return False
        try:
            return decode_hello(self.hellos[-1]) == V1
        except ValueError:
            return False

    @property
    def connected(self):
        return self._current is not None

    def wait_connected(self, timeout=30, count=None):
        """Waits until `count` connections (default: at least one, and one current) have said
        hello; returns the number of connections so far."""
        count = count or 1
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (self.connections >= count and self._current is not None):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for ztunnel's connection {count} "
                                         f"(connections so far: {self.connections}, errors: {self.errors})")
                self._changed.wait(min(left, 0.1))
            return self.connections

    def wait_replayed(self, connection, timeout=30):
        """Waits for the automatic replay on connection number `connection`; returns its acks."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                done = [r for r in self.replays if r["connection"] == connection]
                if done:
                    if done[0]["acks"] is None:
                        raise AssertionError(f"the replay on connection {connection} failed: {self.errors}")
                    return done[0]["acks"]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for the replay on connection "
                                         f"{connection} (errors: {self.errors})")
                self._changed.wait(min(left, 0.1))

    def probe(self):
        """The agent's liveness probe: a 10 ms read on the current connection that must time out
        (ztunnel never sends unsolicited messages). True if it timed out."""
        conn = self._current
        if conn is None:
            return False
        with self._request_lock:
            ready, _, _ = select.select([conn], [], [], 0.01)
            if not ready:
                return True
            try:
                data = self._receive(conn, 0)
            except ZdsError:
                return False
            self.unsolicited.append(data)
            return False

    # -- requests ---------------------------------------------------------------------------

    def add(self, uid, netns_path, name, namespace, service_account, fds=None, info=True, remember=True):
        """AddWorkload with one fd of `netns_path`; returns the ack's error string.
        `fds`: send these instead (the caller keeps them); `info=False`: no workload_info;
        `remember`: put the pod in the snapshot that `replay` sends."""
        if remember:
            self.pods[uid] = {"netns_path": netns_path, "name": name, "namespace": namespace,
                              "service_account": service_account}
        payload = encode_add(uid, encode_workload_info(name, namespace, service_account) if info else None)
        if fds is not None:
            return self._request(payload, fds, "add", uid)
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self._request(payload, [fd], "add", uid)
        finally:
            os.close(fd)

    def keep(self, uid):
        return self._request(encode_keep(uid), (), "keep", uid)

    def delete(self, uid, forget=True):
        if forget:
            self.pods.pop(uid, None)
        return self._request(encode_del(uid), (), "del", uid)

    def snapshot_sent(self):
        return self._request(encode_snapshot_sent(), (), "snapshot_sent", None)

    def send_raw(self, data, fds=()):
        """Any bytes (and fds) as one message; returns the ack's error string."""
        return self._request(bytes(data), fds, "raw", None)

    def forget(self, uid):
        """Drops a pod from the snapshot without telling ztunnel (it will be missing from the next
        replay, so ztunnel must drain it at SnapshotSent)."""
        self.pods.pop(uid, None)

    def replay(self):
        """The snapshot, on the current connection: Add for every known pod whose netns opens,
        Keep for the others, then SnapshotSent. Returns the acks, in order."""
        acks = []
        with self._request_lock:
            for uid, pod in list(self.pods.items()):
                try:
                    fd = os.open(pod["netns_path"], os.O_RDONLY | os.O_CLOEXEC) if pod["netns_path"] else None
                except OSError:
                    fd = None
                if fd is None:
                    acks.append(self.keep(uid))
                    continue
                try:
                    acks.append(self.add(uid, None, pod["name"], pod["namespace"], pod["service_account"],
                                         fds=[fd], remember=False))
                finally:
                    os.close(fd)
            acks.append(self.snapshot_sent())
        return acks

    def disconnect(self):
        """Closes the current connection (ztunnel must reconnect)."""
        with self._changed:
            conn, self._current = self._current, None
            if conn is not None:
                conn.close()
                self._all.remove(conn)

    def _request(self, payload, fds, kind, uid):
        if len(payload) >= MAX_MESSAGE:
            raise ValueError(f"{kind} message of {len(payload)} bytes: ZDS messages must stay under 1 KiB")
        with self._request_lock:
            conn = self._current
            if conn is None:
                raise ZdsError(f"{kind}: ztunnel is not connected")
            number = self.connections
            # Nothing may be waiting: ztunnel only ever answers.
            while select.select([conn], [], [], 0)[0]:
                self.unsolicited.append(self._receive(conn, 0))
            if fds:
                conn.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", list(fds)))])
            else:
                conn.sendmsg([payload])
            data = self._receive(conn, self.ack_timeout)
            try:
                error = decode_response(data)
            except ValueError as problem:
                raise ZdsError(f"{kind} {uid}: not a WorkloadResponse{{ack}} ({problem}): {data.hex()}")
            self.acks.append(error)
            self.history.append((number, kind, uid, error))
            return error

    @staticmethod
    def _receive(conn, timeout):
        """One message from ztunnel within timeout seconds; ZdsError on timeout, a closed
        connection, truncation, or any fd (ztunnel never sends one)."""
        ready, _, _ = select.select([conn], [], [], timeout)
        if not ready:
            raise ZdsError(f"no message from ztunnel within {timeout}s")
        try:
            data, ancdata, flags, _ = conn.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * 4))
        except OSError as error:
            raise ZdsError(f"receive failed: {error}")
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                for fd in fds:
                    os.close(fd)
                raise ZdsError(f"ztunnel sent {len(fds)} fd(s)")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ZdsError("message truncated (over 1 KiB)")
        if not data:
            raise ZdsError("connection closed by ztunnel")
        return data
