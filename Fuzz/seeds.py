#!/usr/bin/env python3
"""Writes valid IPC frames into a corpus directory as libFuzzer seeds (protocol version 2)."""
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
    "listener": frame(0x0102, string("admin"), fds=1) + b"",
    "table": frame(0x0104, struct.pack(">H", 1) + struct.pack(">BHiBI", 2, 0, 42, 3, 1) + string("killed by signal SIGKILL")),
    # Protocol 2: each seccomp rule ends with its conditions (u8 count, then index, op, source,
    # u64 value, u64 value two); the setup ends with the Landlock policy (bool present, ...).
    "setup": frame(0x0101, struct.pack(">HBH", 2, 2, 0) + struct.pack(">H", 1) + string("RUST_LOG") + string("info")
                   + struct.pack(">IIBB", 65533, 65533, 1, 0) + struct.pack(">H", 2)
                   + b"\x00" + string("read") + b"\x00\x00" + b"\x00"
                   + b"\x00" + string("tgkill") + b"\x00\x00" + b"\x01" + struct.pack(">BBBQQ", 0, 4, 1, 0, 0)
                   + b"\x01" + b"\x01\x01" + struct.pack(">HH", 1, 15012) + b"\x01\x01\x01"),
    "ca_token": frame(0x0109, string("eyJhbGciOi.token")),
    "sign": frame(0x0401, struct.pack(">I", 32) + bytes(32) + b"\x01"
                  + string_bytes(b" " * 64 + b"TLS 1.3, server CertificateVerify" + b"\x00" + bytes(32)), request_id=7),
    "withdraw": frame(0x0305, string("spiffe://cluster.local/ns/a/sa/b")),
}
os.makedirs(sys.argv[1], exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write(data)
