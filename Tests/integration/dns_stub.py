"""A minimal DNS server for tests (RFC 1035 over UDP, and over TCP with `tcp=True`): answers A
queries for the names it is given, an empty NOERROR for other types of those names, NXDOMAIN for
anything else. Enough for glibc's resolver to turn a hostname into an address through a real UDP
exchange, and for the pods' DNS proxy to forward to over TCP. `queries` records (name, type) and
`tcp_queries` the ones that came over TCP."""
import socket
import struct
import threading


class DnsStub:
    def __init__(self, host, answers, port=53, tcp=False, truncate_udp=()):
        """`answers`: {name: IPv4 text}. `truncate_udp`: names answered over UDP with TC set and no
        records (the full answer comes over TCP)."""
        self.truncate_udp = {name.lower() for name in truncate_udp}
        self.answers = {name.lower().rstrip("."): socket.inet_aton(ip) for name, ip in answers.items()}
        self.queries = []
        self.tcp_queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.listener = None
        if tcp:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(16)
            threading.Thread(target=self._serve_tcp, daemon=True).start()

    def _serve_tcp(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one_tcp, args=(conn,), daemon=True).start()

    def _one_tcp(self, conn):
        with conn:
            conn.settimeout(10)
            try:
                while True:
                    head = self._exactly(conn, 2)
                    if head is None:
                        return
                    packet = self._exactly(conn, struct.unpack("!H", head)[0])
                    if packet is None:
                        return
                    before = len(self.queries)
                    reply = self._answer(packet)
                    self.tcp_queries.extend(self.queries[before:])
                    if reply:
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                return

    @staticmethod
    def _exactly(conn, count):
        data = b""
        while len(data) < count:
            chunk = conn.recv(count - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _serve(self):
        while True:
            try:
                packet, peer = self.sock.recvfrom(512)
            except OSError:
                return
            reply = self._answer(packet, udp=True)
            if reply:
                self.sock.sendto(reply, peer)

    def _answer(self, packet, udp=False):
        if len(packet) < 12:
            return None
        ident, _flags, qdcount = struct.unpack("!HHH", packet[:6])
        if qdcount != 1:
            return None
        labels, offset = [], 12
        while offset < len(packet) and packet[offset] != 0:
            length = packet[offset]
            labels.append(packet[offset + 1:offset + 1 + length].decode("ascii", "replace"))
            offset += 1 + length
        question_end = offset + 5
        if question_end > len(packet):
            return None
        qtype, _qclass = struct.unpack("!HH", packet[offset + 1:question_end])
        name = ".".join(labels).lower()
        self.queries.append((name, qtype))
        question = packet[12:question_end]
        known = name in self.answers
        rcode = 0 if known else 3
        answers = b""
        if known and qtype == 1:
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + self.answers[name]
        if udp and name in self.truncate_udp:
            return struct.pack("!HHHHHH", ident, 0x8380 | rcode, 1, 0, 0, 0) + question  # TC, no records
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
        return header + question + answers

    def close(self):
        """Frees the port at once: a socket closed under a thread blocked in it stays bound until
        that call returns, so the calls are woken first (shutdown), then the threads joined."""
        for sock in (self.sock, self.listener):
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # an unconnected UDP socket says ENOTCONN, and its reader is woken all the same
            sock.close()
        self.thread.join(timeout=5)
