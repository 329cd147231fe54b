#!/usr/bin/env python3
"""How the published mesh scales (issue #8): istiod (the test double, Tests/integration/
xds_double.py) serves a mesh of WORKLOADS workloads, SERVICES services and POLICIES policies; the
daemon takes it over delta ADS in its xDS worker and publishes it to the NetWorker as a sealed
memfd. Prints figures, asserts nothing:

  - start to ready: daemon start until readiness (xDS connect, both types, snapshot, model);
  - the snapshot's size (the Supervisor's mesh_snapshot audit event);
  - one more workload pushed until the NetWorker reports the new generation in force;
  - churn: XDS_CHANGES (20) changes one after another, each waited for: time and CPU per change;
  - a rollout: XDS_ROLLOUT (1,000) workloads changed in one push: time, CPU, the NetWorker's account;
  - the xDS worker's and the NetWorker's memory (PSS).

  make bench-xds            (release binaries; XDS_SCALE=20000,5000,1000 by default)
"""
import os
import re
import tempfile
import time

from common import pss_kib  # noqa: E402 (sets the path and the release binaries first)
import xds_double as x  # noqa: E402
from daemon import Daemon, wait_for  # noqa: E402


def build_mesh(xds, workloads, services, policies):
    for s in range(services):
        host = f"svc-{s}.ns-{s % 50}.svc.cluster.local"
        xds.set_resource(x.ADDRESS, f"ns-{s % 50}/{host}", x.address_of_service(x.service(
            f"svc-{s}", f"ns-{s % 50}", host, addresses=[("", f"10.96.{s // 250}.{s % 250 + 1}")], ports=[(80, 8080)])), version="1")
    for w in range(workloads):
        xds.set_resource(x.ADDRESS, *workload_resource(w, services), version="1")
    for p in range(policies):
        xds.set_resource(x.AUTHORIZATION, f"ns-{p % 50}/policy-{p}", x.authorization(
            f"policy-{p}", f"ns-{p % 50}", scope="NAMESPACE", action="ALLOW",
            groups=[x.auth_group(x.auth_rules(x.auth_match(principals=[{"exact": f"cluster.local/ns/ns-{p % 50}/sa/sa-{p % 200}"}])))]),
            version="1")


def workload_resource(w, services, sa=None):
    """Workload number w of the mesh: (name, Address bytes)."""
    s = w % max(services, 1)
    host = f"svc-{s}.ns-{s % 50}.svc.cluster.local"
    uid = f"cluster1//Pod/ns-{w % 50}/pod-{w}"
    return uid, x.address_of_workload(x.workload(
        uid, f"pod-{w}", f"ns-{w % 50}", addresses=[f"10.{w // 65025 + 1}.{w // 255 % 255}.{w % 255 + 1}"],
        service_account=sa or f"sa-{w % 200}", node=f"node-{w % 100}",
        services={f"ns-{s % 50}/{host}": {80: 8080}} if services else None))


def phases(log, generation):
    """Seconds from the stream's opening to each later step, from the daemon's log timestamps."""
    marks = [("stream opened", "xds stream opened id=1 "), ("synced", "xds synced"),
             ("published", "mesh published generation="),
             ("in force", f"mesh model source=xds generation={generation} ")]
    times = {}
    for line in log.splitlines():
        for name, needle in marks:
            if needle in line and name not in times:
                stamp = line.split("\t", 1)[0]
                times[name] = int(stamp[11:13]) * 3600 + int(stamp[14:16]) * 60 + float(stamp[17:23])
    start = times.get("stream opened")
    return [f"{name} +{times[name] - start:.2f} s" for name, _ in marks[1:] if name in times and start is not None]


def cpu_seconds(pid):
    """User and system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    workloads, services, policies = (int(v) for v in os.environ.get("XDS_SCALE", "20000,5000,1000").split(","))
    tmp = tempfile.mkdtemp(prefix="ztunnel-xds-scale-")
    xds = x.XdsDouble(tmp)
    xds.start()
    began = time.monotonic()
    build_mesh(xds, workloads, services, policies)
    print(f"xds-scale: mesh of {workloads} workloads, {services} services, {policies} policies "
          f"(built by the double in {time.monotonic() - began:.1f} s)")
    daemon = Daemon(local_config=False, extra_env={
        "XDS_ADDRESS": f"https://127.0.0.1:{xds.port}", "XDS_ROOT_CA": xds.root_pem_path, "AUTH_TOKEN": "t",
        "NODE_NAME": "node-0", "RUST_LOG": "info"})
    try:
        started = time.monotonic()
        daemon.wait_ready(timeout=600)
        ready = time.monotonic() - started
        snapshots = daemon.audit_events("mesh_snapshot")
        print(f"xds-scale: start to ready {ready:.2f} s; snapshot generation {snapshots[-1]['generation']}, "
              f"{snapshots[-1]['bytes'] / 1e6:.1f} MB")
        generation = snapshots[-1]["generation"]
        print("xds-scale: phases (log time): " + ", ".join(phases(daemon.log(), generation)))
        # The double's own encoding is most of the time to sync; what the xDS worker takes is the
        # time from the response leaving the double to its ACK arriving.
        stream = xds.streams[0]
        sent = next(r for r in stream["responses"] if r["type_url"] == x.ADDRESS)
        ack = next(r for r in stream["requests"] if r["response_nonce"] == sent["nonce"])
        print(f"xds-scale: the Address response ({len(sent['raw']) / 1e6:.1f} MB, {len(sent['resources'])} resources) "
              f"sent to ACK received: {ack['time'] - sent['time']:.2f} s")

        pushed = time.monotonic()
        xds.set_resource(x.ADDRESS, "cluster1//Pod/ns-0/extra", x.address_of_workload(x.workload(
            "cluster1//Pod/ns-0/extra", "extra", "ns-0", addresses=["10.250.0.1"])))
        pattern = re.compile(rf"mesh model source=xds generation={generation + 1} ")
        wait_for(lambda: pattern.search(daemon.log()), 600, "the next generation in force")
        print(f"xds-scale: one more workload, push to in force in the NetWorker: {time.monotonic() - pushed:.2f} s")
        (xdsw,) = daemon.workers("xds-worker")
        (net,) = daemon.workers("net-worker")
        # Churn: one workload changed at a time, each waited for; what one change costs.
        changes = int(os.environ.get("XDS_CHANGES", "20"))
        cpu_before = {pid: cpu_seconds(pid) for pid in (xdsw, net, daemon.pid)}
        began = time.monotonic()
        for n in range(changes):
            xds.set_resource(x.ADDRESS, "cluster1//Pod/ns-0/extra", x.address_of_workload(x.workload(
                "cluster1//Pod/ns-0/extra", f"extra-{n}", "ns-0", addresses=["10.250.0.1"])))
            pattern = re.compile(rf"mesh model source=xds generation={generation + 2 + n} ")
            wait_for(lambda: pattern.search(daemon.log()), 600, "the next generation in force")
        took = time.monotonic() - began
        cpu = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in cpu_before}
        print(f"xds-scale: {changes} changes one after another: {took / changes * 1000:.0f} ms each, push to in force; "
              f"CPU per change: xDS worker {cpu[xdsw] / changes * 1000:.0f} ms, NetWorker {cpu[net] / changes * 1000:.0f} ms, "
              f"Supervisor {cpu[daemon.pid] / changes * 1000:.0f} ms")
        # The NetWorker's own account of each change (its log): decoding the snapshot, then the model.
        lines = [l for l in daemon.log().splitlines() if "mesh model source=xds" in l and "decode_ms=" in l][-changes:]
        def median(key):
            values = sorted(int(l.split(f"{key}=")[1].split()[0]) for l in lines)
            return values[len(values) // 2] if values else -1
        built = {l.split("model=")[1].split()[0] for l in lines}
        print(f"xds-scale: the NetWorker per change (median of its log): decode {median('decode_ms')} ms, "
              f"model {median('model_ms')} ms ({'/'.join(sorted(built))})")
        # A rollout: ROLLOUT (1,000) workloads change in one push (a new service account each).
        rollout = min(int(os.environ.get("XDS_ROLLOUT", "1000")), workloads)
        if rollout:
            bodies = [workload_resource(w, services, sa="rolled") for w in range(rollout)]
            cpu_before = {pid: cpu_seconds(pid) for pid in (xdsw, net)}
            began = time.monotonic()
            xds.push_raw(x.ADDRESS, resources=[(name, "2", body) for name, body in bodies])
            pattern = re.compile(rf"mesh model source=xds generation={generation + 2 + changes} ")
            wait_for(lambda: pattern.search(daemon.log()), 600, "the rollout in force")
            took = time.monotonic() - began
            cpu = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in cpu_before}
            line = [l for l in daemon.log().splitlines() if pattern.search(l)][-1]
            print(f"xds-scale: a rollout of {rollout} workloads in one push: {took * 1000:.0f} ms push to in force "
                  f"(the double's encoding included); CPU: xDS worker {cpu[xdsw] * 1000:.0f} ms, NetWorker "
                  f"{cpu[net] * 1000:.0f} ms; NetWorker decode {line.split('decode_ms=')[1].split()[0]} ms, "
                  f"model {line.split('model_ms=')[1].split()[0]} ms")
        print(f"xds-scale: PSS xDS worker {pss_kib(xdsw) / 1024:.0f} MiB, NetWorker {pss_kib(net) / 1024:.0f} MiB")
    finally:
        daemon.stop()
        xds.stop()


if __name__ == "__main__":
    main()
