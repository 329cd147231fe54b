"""istiod named by hostname (its default, istiod.istio-system.svc): the xDS worker and the
CertWorker resolve the name through glibc's resolver, over a real UDP exchange with a DNS server,
after their sandboxes are in place. The resolver calls ioctl(FIONREAD) on every UDP answer; a
seccomp list without it kills the worker on its first connect, forever (review of issue #8). The daemon runs in a network namespace
of its own whose resolv.conf (`ip netns exec` mounts /etc/netns/<name>/resolv.conf) names a stub
DNS server on a veth address where the xDS double listens too."""
import os
import shutil
import subprocess

import pytest

from daemon import wait_for
from dns_stub import DnsStub
from identities import MiniCA
from netns import Netns

grpc = pytest.importorskip("grpc")
import xds_double as x  # noqa: E402
from ca_double import IstioCADouble  # noqa: E402


def test_istiod_by_hostname_is_resolved_inside_the_sandbox(start_daemon, tmp_path):
    tag = os.getpid() % 10000
    name, host_if, ns_if = f"ztdns{tag}", f"ztdh{tag}", f"ztdn{tag}"
    subnet = f"10.251.{tag % 250}"
    resolv_dir = f"/etc/netns/{name}"
    ns = Netns(name)
    dns = xds = ca = None
    try:
        subprocess.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if], check=True)
        subprocess.run(["ip", "link", "set", ns_if, "netns", name], check=True)
        subprocess.run(["ip", "addr", "add", f"{subnet}.1/30", "dev", host_if], check=True)
        subprocess.run(["ip", "link", "set", host_if, "up"], check=True)
        ns.run("ip", "addr", "add", f"{subnet}.2/30", "dev", ns_if)
        ns.run("ip", "link", "set", ns_if, "up")
        os.makedirs(resolv_dir, exist_ok=True)
        with open(f"{resolv_dir}/resolv.conf", "w") as f:
            f.write(f"nameserver {subnet}.1\n")
        dns = DnsStub(f"{subnet}.1", {"istiod.test": f"{subnet}.1"})
        xds = x.XdsDouble(str(tmp_path / "xds"), server_name="istiod.test", host=f"{subnet}.1")
        xds.start()
        ca = IstioCADouble(MiniCA(), str(tmp_path / "ca"), server_name="istiod.test", host=f"{subnet}.1")
        ca.start()
        # One HBONE workload on this node: its certificate comes from the CA by hostname too.
        xds.set_resource(x.ADDRESS, "c//Pod/default/a", x.address_of_workload(x.workload(
            "c//Pod/default/a", "a", "default", addresses=["10.9.0.1"], service_account="a", node="node-a")))
        daemon = start_daemon(netns=name, local_config=False, extra_env={
            "XDS_ADDRESS": f"https://istiod.test:{xds.port}", "XDS_ROOT_CA": xds.root_pem_path, "AUTH_TOKEN": "t",
            "CA_ADDRESS": f"https://istiod.test:{ca.port}", "CA_ROOT_CA": ca.root_pem_path, "NODE_NAME": "node-a"})
        xds.wait_for(lambda _, r: r["type_url"] == x.AUTHORIZATION and x.is_ack(r), 30)
        wait_for(lambda: ns.call(daemon.ready), 30, "readiness, asked inside the namespace")
        wait_for(lambda: [c for c in ca.calls if c["error"] is None], 30, "a certificate from the CA, by hostname")
        assert ("istiod.test", 1) in dns.queries
        assert not daemon.audit_events("worker_exit"), daemon.audit()
        # resolv.conf changed under the running daemon (rewritten in place). glibc re-reads it on
        # the next lookup, which the confined worker cannot (open is EACCES; with no search line
        # glibc also asks uname for the domain, once a seccomp kill). The worker's next lookup
        # fails, sees the change and exits to be restarted; the new worker reads the file before
        # its sandbox, and the stream comes back by name.
        with open(f"{resolv_dir}/resolv.conf", "w") as f:
            f.write(f"# rewritten\nnameserver {subnet}.1\n")
        streams = xds.stream_count
        xds.end_streams()
        wait_for(lambda: xds.stream_count > streams and xds.open_stream_count >= 1, 30, "the xDS stream, reconnected by name")
        (exit_event,) = daemon.audit_events("worker_exit")
        assert exit_event["role"] == "xds-worker" and exit_event["cause"] == "exited with status 75", exit_event
        assert "/etc/resolv.conf changed after the sandbox closed" in daemon.log()
    finally:
        if xds:
            xds.stop()
        if ca:
            ca.stop()
        if dns:
            dns.close()
        ns.delete()  # takes its end of the veth pair, and with it the pair
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        shutil.rmtree(resolv_dir, ignore_errors=True)
