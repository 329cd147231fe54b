#!/usr/bin/env python3
"""Writes valid IPC frames into a corpus directory as libFuzzer seeds (protocol version 6). A
request id whose low byte has its top bit set (0x80) makes the harness attach an fd."""
import os
import struct
import sys


def frame(msg_type, payload=b"", request_id=0, fds=0):
    return struct.pack(">IHIB", len(payload), msg_type, request_id, fds) + payload


def string(text):
    return string_bytes(text.encode())


def string_bytes(data):
    return struct.pack(">I", len(data)) + data


seeds = {
    "ready": frame(0x0202),
    "shutdown": frame(0x0203),
    "hello": frame(0x0201, struct.pack(">HBi", 1, 2, 1234)),
    "configured": frame(0x0103),
    "drain": frame(0x0105, struct.pack(">I", 5000)),
    "listener": frame(0x0102, string("admin"), request_id=0x80, fds=1),
    "table": frame(0x0104, struct.pack(">H", 1) + struct.pack(">BHiBI", 2, 0, 42, 3, 1) + string("killed by signal SIGKILL")),
    # Protocol 2: each seccomp rule ends with its conditions (u8 count, then index, op, source,
    # u64 value, u64 value two); the setup ends with the Landlock policy (bool present, ...).
    "setup": frame(0x0101, struct.pack(">HBH", 6, 2, 0) + struct.pack(">H", 1) + string("RUST_LOG") + string("info")
                   + struct.pack(">IIBB", 65533, 65533, 1, 0) + struct.pack(">H", 2)
                   + b"\x00" + string("read") + b"\x00\x00" + b"\x00"
                   + b"\x00" + string("tgkill") + b"\x00\x00" + b"\x01" + struct.pack(">BBBQQ", 0, 4, 1, 0, 0)
                   + b"\x01" + b"\x01\x01" + struct.pack(">HH", 1, 15012) + b"\x01\x01\x01"),
    # The xDS worker's setup: upstream RUST_LOG directives and a prefixed setting, checked by the
    # harness as a worker checks them.
    "setup_xds": frame(0x0101, struct.pack(">HBH", 6, 3, 0) + struct.pack(">H", 2)
                       + string("RUST_LOG") + string("info,access=debug,ztunnel::xds=trace")
                       + string("XDS_HEADER_X_TENANT") + string("blue")
                       + struct.pack(">IIBB", 65534, 65534, 0, 0) + struct.pack(">H", 1)
                       + b"\x00" + string("read") + b"\x00\x00" + b"\x00" + b"\x00"),
    "mesh_snapshot_up": frame(0x0207, struct.pack(">Q", 7), request_id=0x80, fds=1),
    "mesh_snapshot_down": frame(0x010b, struct.pack(">Q", 7), request_id=0x80, fds=1),
    "mesh_applied": frame(0x0208, struct.pack(">QB", 7, 1)),
    "xds_stats_up": frame(0x0209, struct.pack(">8Q", 1, 2, 3, 4, 5, 6, 700, 800)),
    "xds_stats_down": frame(0x010c, struct.pack(">8Q", 1, 2, 3, 4, 5, 6, 700, 800)),
    "metrics_region": frame(0x010d, struct.pack(">HB", 1, 0), request_id=0x80, fds=1),
    "ca_token": frame(0x0109, string("eyJhbGciOi.token")),
    "log_filter_up": frame(0x020a, string("info,ztunnel::proxy=debug")),
    "log_filter_down": frame(0x010e, string("warn,access=info")),
    "demand_up": frame(0x020b, string("/10.0.0.1")),
    "demand_down": frame(0x010f, string("shop/echo.shop.svc.cluster.local")),
    "demand_answered_up": frame(0x020c, struct.pack(">H", 2) + string("/10.0.0.1") + string("test/uid-1")),
    "demand_answered_down": frame(0x0110, struct.pack(">QH", 9, 1) + string("/10.0.0.1")),
    "pod_added": frame(0x0111, string("5f1d2c3a-0001") + string("client-1") + string("default") + string("client")),
    "pod_listener": frame(0x0112, string("5f1d2c3a-0001") + string("inbound"), request_id=0x80, fds=1),
    "pod_removed": frame(0x0113, string("5f1d2c3a-0001")),
    "pod_socket": frame(0x0114, string("5f1d2c3a-0001") + struct.pack(">B", 4), request_id=0x80, fds=1),
    "in_pod_status": frame(0x0115, struct.pack(">BH", 1, 1) + string("u-2") + string("c") + string("ns") + string("sa")
                           + string("failure to start proxy : address in use") + struct.pack(">QQ", 3, 1)),
    "process_stats": frame(0x0116, struct.pack(">II", 42, 1048576)),
    "revocations": frame(0x0117, struct.pack(">Q", 2), request_id=0x80, fds=1),
    "revocations_applied": frame(0x020e, struct.pack(">QB", 2, 1)),
    "pod_sockets_wanted": frame(0x020d, string("5f1d2c3a-0001") + struct.pack(">BH", 6, 8)),
    "sign": frame(0x0401, struct.pack(">I", 32) + bytes(32) + b"\x01"
                  + string_bytes(b" " * 64 + b"TLS 1.3, server CertificateVerify" + b"\x00" + bytes(32)), request_id=7),
    "withdraw": frame(0x0305, string("spiffe://cluster.local/ns/a/sa/b")),
    # Not frames: POST /logging queries, which the same harness also tries.
    "logging_level": b"level=ztunnel%3A%3Aproxy%3Ddebug%2Caccess%3Doff",
    "logging_reset": b"reset&level=warn",
}
os.makedirs(sys.argv[1], exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write(data)
