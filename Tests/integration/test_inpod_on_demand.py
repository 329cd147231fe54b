"""In-pod mode with the mesh from istiod on demand (issues #8 and #9 together): the pods are
known only to the istiod double, the daemon subscribes to no Address (XDS_ON_DEMAND=true), and
every connection asks for the addresses it needs: inbound plaintext to a pod (15006), and a pod
to pod connection (15001, then the peer's 15008). Namespaces, the istio-cni double and istiod's
double as in test_inpod.py and test_xds.py."""
import pytest

from daemon import wait_for
from test_inpod import box, cni, enrol, wait_ready  # noqa: F401 (fixtures)
from test_inpod_mesh import exchange, wait_up

grpc = pytest.importorskip("grpc")
import xds_double as x  # noqa: E402


def fetched(xds, key):
    return xds.requests(lambda _, r: r["type_url"] == x.ADDRESS and key in r["resource_names_subscribe"]
                        and not r["initial"])


def start(start_daemon, box, cni, xds):
    for pod in box.pods[:2]:
        xds.set_resource(x.ADDRESS, pod.xds_uid, x.address_of_workload(x.workload(
            pod.xds_uid, pod.name, pod.namespace, addresses=[pod.ip], service_account=pod.service_account,
            node=box.node)))
    daemon = start_daemon(local_config=False, extra_env={
        "INPOD_UDS": cni.path, "NODE_NAME": box.node, "UNSTABLE_ENABLE_SOCKS5": "false",
        "XDS_ADDRESS": f"https://127.0.0.1:{xds.port}", "XDS_ROOT_CA": xds.root_pem_path, "AUTH_TOKEN": "xds-token",
        "XDS_ON_DEMAND": "true", "ISTIO_META_DNS_CAPTURE": "false"})
    wait_for(lambda: cni.connected or daemon.proc.poll() is not None, 60, "the daemon's ZDS connection")
    enrol(cni, box.pods[:2])
    wait_ready(daemon)
    return daemon


def test_inbound_plaintext_to_a_pod_istiod_has_not_sent_asks_for_it(box, cni, xds, start_daemon):
    a, b, c = box.pods
    box.unredirect(c)  # c: not enrolled, no capture, not in the mesh
    b.echo_server(8080)
    daemon = start(start_daemon, box, cni, xds)
    wait_up(daemon, [a, b])
    assert not any(w["uid"] == b.xds_uid for w in daemon.config_dump()["workloads"])
    assert exchange(c, b.ip, 8080, b"inbound, asked for") == ("ok", b"inbound, asked for")
    assert fetched(xds, f"/{b.ip}"), "no on-demand request for the destination pod"
    line = wait_for(lambda: next((l for l in daemon.log().splitlines()
                                  if "connection complete" in l and "direction=inbound" in l), None), 10, "the inbound line")
    assert f"dst.workload={b.name}" in line and "error=" not in line, line


def test_pod_to_pod_asks_for_both_ends_and_goes_over_hbone(box, cni, xds, start_daemon):
    a, b, _ = box.pods
    b.echo_server(8080)
    daemon = start(start_daemon, box, cni, xds)
    wait_up(daemon, [a, b])
    # The first connection waits for both lookups and both certificates, then goes through.
    assert exchange(a, b.ip, 8080, b"pod to pod on demand", timeout=30) == ("ok", b"pod to pod on demand")
    assert fetched(xds, f"/{a.ip}") and fetched(xds, f"/{b.ip}")
    outbound = wait_for(lambda: next((l for l in daemon.log().splitlines()
                                      if "connection complete" in l and "direction=outbound" in l), None), 10, "the outbound line")
    assert f"src.identity={a.identity}" in outbound and f"dst.identity={b.identity}" in outbound, outbound
