#!/usr/bin/env python3
"""Writes valid IPC frames into a corpus directory as libFuzzer seeds (protocol version 1)."""
import os
import struct
import sys


def frame(msg_type, payload=b"", request_id=0, fds=0):
    return struct.pack(">IHIB", len(payload), msg_type, request_id, fds) + payload


def string(text):
    data = text.encode()
    return struct.pack(">I", len(data)) + data


seeds = {
    "ready": frame(0x0202),
    "shutdown": frame(0x0203),
    "hello": frame(0x0201, struct.pack(">HBi", 1, 2, 1234)),
    "configured": frame(0x0103),
    "drain": frame(0x0105, struct.pack(">I", 5000)),
    "listener": frame(0x0102, string("admin"), fds=1) + b"",
    "table": frame(0x0104, struct.pack(">H", 1) + struct.pack(">BHiBI", 2, 0, 42, 3, 1) + string("killed by signal SIGKILL")),
    "setup": frame(0x0101, struct.pack(">HBH", 1, 2, 0) + struct.pack(">H", 1) + string("RUST_LOG") + string("info")
                   + struct.pack(">IIBB", 65534, 65534, 1, 0) + struct.pack(">H", 1) + b"\x00" + string("read") + b"\x00\x00"),
}
os.makedirs(sys.argv[1], exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write(data)
