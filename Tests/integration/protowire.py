"""Protocol buffers' wire format, written by hand for the test doubles (no generated code, so the
doubles stay independent of the daemon's own encoders)."""

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5


def varint(n):
    n &= (1 << 64) - 1  # negative int64s are ten-byte two's complement on the wire
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number, wire):
    return varint(number << 3 | wire)


def length_delimited(number, payload):
    """A length-delimited field; a str is written as UTF-8."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return key(number, WIRE_LEN) + varint(len(payload)) + payload
