"""A minimal DNS server for tests (RFC 1035 over UDP): answers A queries for the names it is
given, an empty NOERROR for other types of those names, NXDOMAIN for anything else. Enough for
glibc's resolver to turn a hostname into an address through a real UDP exchange."""
import socket
import struct
import threading


class DnsStub:
    def __init__(self, host, answers, port=53):
        """`answers`: {name: IPv4 text}."""
        self.answers = {name.lower().rstrip("."): socket.inet_aton(ip) for name, ip in answers.items()}
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                packet, peer = self.sock.recvfrom(512)
            except OSError:
                return
            reply = self._answer(packet)
            if reply:
                self.sock.sendto(reply, peer)

    def _answer(self, packet):
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
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
        return header + question + answers

    def close(self):
        self.sock.close()
