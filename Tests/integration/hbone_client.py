"""A small HBONE client on Python's `ssl` and `h2` (a stack we did not write): mutual TLS 1.3
with ALPN h2 and no SNI, then HTTP/2 CONNECT streams carrying TCP bytes (ISTIO_COMPAT §5)."""
import os
import socket
import ssl

import h2.config
import h2.connection
import h2.events


class HBONEClient:
    def __init__(self, port, client_dir, host="127.0.0.1", timeout=10):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False  # HBONE checks the SPIFFE id, not a host name
        context.load_verify_locations(os.path.join(client_dir, "root-cert.pem"))
        context.load_cert_chain(os.path.join(client_dir, "cert-chain.pem"), os.path.join(client_dir, "key.pem"))
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = context.wrap_socket(raw)  # no server_hostname: no SNI
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()
        self.data = {}
        self.status = {}
        self.ended = set()
        self.reset = {}
        self.headers = {}
        self.pings = 0
        self.goaway = None  # (error code, last stream id) once the server sent GOAWAY

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def connect(self, authority, extra_headers=(), method="CONNECT"):
        """Opens a stream; returns its id (the answer comes through `pump`)."""
        stream = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":authority", authority)]
        if method != "CONNECT":
            headers += [(":scheme", "https"), (":path", "/")]
        self.conn.send_headers(stream, headers + list(extra_headers))
        self.flush()
        self.data[stream] = b""
        return stream

    def send(self, stream, payload, end=False):
        """Sends all of `payload`, within the flow-control windows the server grants."""
        offset = 0
        while offset < len(payload):
            window = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size)
            if window <= 0:
                self._read_once()
                continue
            chunk = payload[offset:offset + window]
            self.conn.send_data(stream, chunk)
            offset += len(chunk)
            self.flush()
        if end:
            self.conn.end_stream(stream)
            self.flush()

    def pump(self, until, limit=1000):
        """Reads and handles frames until `until()` holds (or the connection ends)."""
        for _ in range(limit):
            if until():
                return True
            if not self._read_once():
                return until()
        return until()

    def _read_once(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        if True:
            for event in self.conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    self.headers[event.stream_id] = dict(event.headers)
                    self.status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    self.reset[event.stream_id] = event.error_code
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.PingReceived):
                    self.pings += 1  # h2 queues the ACK; flush() below sends it
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.goaway = (event.error_code, event.last_stream_id)
            self.flush()
        return True

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except OSError:
            pass
        self.sock.close()
