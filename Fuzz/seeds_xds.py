#!/usr/bin/env python3
"""Writes seeds for the xds fuzz target: valid resources encoded by hand from ISTIO_COMPAT §7's
field numbers. The first byte selects the decoder: 0 Address, 1 Authorization, 2 a
DeltaDiscoveryResponse carrying resources of both type URLs, 3 the same response through the xDS
worker's DeltaADS, 4 a mesh snapshot (a response with system_version_info = the generation)."""
import os
import sys


def varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number, payload):  # length-delimited
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def text(number, value):
    return field(number, value.encode())


def number(number, value):
    return varint(number << 3) + varint(value)


def main(directory):
    os.makedirs(directory, exist_ok=True)
    ports = field(1, number(1, 80) + number(2, 8080))
    waypoint = field(8, field(2, text(1, "") + field(2, bytes([10, 0, 0, 9]))) + number(3, 15008))
    workload = (text(20, "c1//Pod/shop/echo-1") + text(1, "echo-1") + text(2, "shop") + field(3, bytes([10, 0, 0, 7]))
                + number(5, 1) + text(6, "cluster.local") + text(7, "echo") + waypoint
                + field(22, text(1, "shop/echo.shop.svc.cluster.local") + field(2, ports))
                + text(16, "shop/p") + field(24, text(1, "eu") + text(2, "eu-1")) + field(27, number(1, 3)))
    service = (text(1, "echo") + text(2, "shop") + text(3, "echo.shop.svc.cluster.local")
               + field(4, text(1, "") + field(2, bytes([10, 96, 0, 1]))) + field(5, number(1, 80) + number(2, 8080))
               + text(6, "spiffe://cluster.local/ns/shop/sa/echo") + field(8, number(1, 1) + number(2, 2) + number(3, 1)))
    match = (field(3, text(1, "cluster.local/ns/default/sa/client")) + field(1, field(4, b""))
             + field(5, field(1, bytes([192, 168, 0, 0])) + number(2, 16)) + number(9, 443) + number(10, 22)
             + field(11, text(1, "shop") + text(2, "echo")))
    policy = (text(1, "p") + text(2, "shop") + number(3, 2) + number(4, 1) + field(5, field(1, field(2, match)))
              + number(6, 0))
    seeds = {
        "workload": b"\x00" + field(1, workload),
        "service": b"\x00" + field(2, service),
        "policy": b"\x01" + policy,
    }
    any_address = lambda value: text(1, "type.googleapis.com/istio.workload.Address") + field(2, value)  # noqa: E731
    any_policy = text(1, "type.googleapis.com/istio.security.Authorization") + field(2, policy)
    response = (text(1, "v1") + field(2, text(1, "1") + field(2, any_address(field(1, workload))) + text(3, "c1//Pod/shop/echo-1"))
                + field(2, text(1, "1") + field(2, any_address(field(2, service))) + text(3, "shop/echo.shop.svc.cluster.local"))
                + field(2, text(1, "1") + field(2, any_policy) + text(3, "shop/p"))
                + text(4, "type.googleapis.com/istio.workload.Address") + text(5, "nonce-1") + text(6, "gone"))
    seeds["response"] = b"\x02" + response
    seeds["ads-response"] = b"\x03" + response
    address_only = (field(2, text(1, "1") + field(2, any_address(field(1, workload))) + text(3, "c1//Pod/shop/echo-1"))
                    + field(2, text(1, "1") + field(2, any_address(field(2, service))) + text(3, "shop/echo.shop.svc.cluster.local")))
    seeds["ads-address"] = b"\x03" + address_only + text(4, "type.googleapis.com/istio.workload.Address") + text(5, "n2")
    seeds["ads-policy"] = (b"\x03" + field(2, text(1, "1") + field(2, any_policy) + text(3, "shop/p"))
                           + text(4, "type.googleapis.com/istio.security.Authorization") + text(5, "n3"))
    seeds["snapshot"] = b"\x04" + text(1, "7") + address_only + field(2, text(1, "1") + field(2, any_policy) + text(3, "shop/p"))
    # Two snapshots in the order NetWorkers require (type URL, then name, by bytes): the second
    # changes the workload's version, keeps the service and drops the policy.
    policy_resource = field(2, text(1, "1") + field(2, any_policy) + text(3, "shop/p"))
    first = text(1, "7") + policy_resource + address_only
    changed = field(2, text(1, "2") + field(2, any_address(field(1, workload))) + text(3, "c1//Pod/shop/echo-1"))
    second = text(1, "8") + changed + field(2, text(1, "1") + field(2, any_address(field(2, service))) + text(3, "shop/echo.shop.svc.cluster.local"))
    seeds["two-snapshots"] = b"\x05" + len(first).to_bytes(2, "big") + first + second
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])
