"""The image (issue #10): scripts/build-image.sh builds it from scratch with buildah (the four
binaries, the libraries they link, the seccomp profiles, nothing else). Here its root filesystem
runs the daemon chrooted, read-only, with /tmp a tmpfs as the chart's emptyDir, and a capability
bounding set of only what the Supervisor keeps; readiness answers and one connection is carried
over HBONE between two workloads (mTLS with certificates from the built-in CA, signing through
key handles), so the image holds everything a pod needs.

Skipped, saying why, where buildah is missing (the Makefile installs it where it can)."""
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

import pod_seccomp
from daemon import BIN, EchoServer, ROOT, free_ports, http, socks5_connect, wait_for
from test_outbound_hbone import config as hbone_config, round_trip

# The Supervisor's capabilities (Sources/Supervisor/main.swift keptCapabilities): the chart
# grants these and no others.
KEPT = {"kill": 5, "setgid": 6, "setuid": 7, "setpcap": 8, "net_admin": 12, "net_raw": 13, "sys_admin": 21}
IMAGE = "ztunnel-swift:test"


def _run(*args, **kw):
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def rootfs():
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed: `make deps` installs it (Debian package buildah)")
    _run(os.path.join(ROOT, "scripts", "build-image.sh"), BIN, IMAGE, timeout=600)
    container = _run("buildah", "from", IMAGE).stdout.strip()
    mounted = _run("buildah", "mount", container).stdout.strip()
    top = tempfile.mkdtemp(prefix="ztunnel-image-")
    made = []
    try:
        # Read-only root, as the chart's readOnlyRootFilesystem; /tmp writable (emptyDir).
        _run("mount", "--bind", mounted, top)
        made.append(top)
        _run("mount", "-o", "remount,bind,ro", top)
        for target, args in (("tmp", ["-t", "tmpfs", "tmpfs"]), ("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            _run("mount", *args, os.path.join(top, target))
            made.append(os.path.join(top, target))
        yield top
    finally:
        for path in reversed(made):
            subprocess.run(["umount", path], capture_output=True)
        os.rmdir(top)
        subprocess.run(["buildah", "rm", container], capture_output=True)
        subprocess.run(["buildah", "rmi", IMAGE], capture_output=True)


def _enter_image(root):
    """In the child, before exec: chroot into the image and keep only the Supervisor's
    capabilities in the bounding set (what the chart's securityContext grants)."""
    libc = ctypes.CDLL(None, use_errno=True)
    os.chroot(root)
    os.chdir("/")
    for cap in range(0, 64):
        if cap not in KEPT.values():
            libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; past the last capability it fails harmlessly


def test_the_image_serves_chrooted_read_only_with_the_charts_capabilities(rootfs):
    serve_one_connection(rootfs, lambda: _enter_image(rootfs))


APPARMOR = os.path.join(ROOT, "deploy", "apparmor", "ztunnel-swift")


def test_the_image_serves_under_the_apparmor_profile(rootfs):
    """deploy/apparmor/ztunnel-swift loaded into the kernel and the daemon started in it (as the
    runtime does for `appArmorProfile: Localhost`): the Supervisor and the workers it starts run
    confined by it, and it still serves. Only where the kernel has AppArmor."""
    if not os.path.exists("/sys/kernel/security/apparmor/profiles"):
        pytest.skip("this kernel has no AppArmor (/sys/kernel/security/apparmor is absent): the profile is only "
                    "compiled here (test_deploy.py::test_the_apparmor_profile_compiles)")
    if shutil.which("apparmor_parser") is None:
        pytest.skip("apparmor_parser is not installed: `make deps` installs it (Debian package apparmor)")
    _run("apparmor_parser", "--replace", "--skip-cache", APPARMOR)
    try:
        def enter():
            _enter_image(rootfs)
            with open("/proc/self/attr/exec", "w") as f:  # confined from the exec on
                f.write("exec ztunnel-swift")

        def confined(daemon):
            pids = [daemon.pid] + [int(p) for p in open(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read().split()]
            for pid in pids:
                with open(f"/proc/{pid}/attr/current") as f:
                    assert f.read().strip() == "ztunnel-swift (enforce)", pid
        serve_one_connection(rootfs, enter, also=confined)
    finally:
        subprocess.run(["apparmor_parser", "--remove", APPARMOR], capture_output=True)


def _wait_ready(daemon, port, log, what):
    """Until readiness answers 200 (or the daemon exits: then its log's tail is the failure)."""
    def ready():
        try:
            return http(port, "/healthz/ready", timeout=2) == (200, "ready\n")
        except OSError:
            return daemon.poll() is not None
    wait_for(ready, 60, what)
    assert daemon.poll() is None, open(log.name).read()[-4000:]


def _stop(daemon):
    """SIGTERM (the daemon drains; 40 s covers the manifest's 30 s grace), then SIGKILL."""
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=40)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def serve_one_connection(rootfs, enter, also=None):
    """Runs the image's daemon (local mode, two workloads of hbone_config) with `enter` before
    exec, waits for readiness, carries one SOCKS5 connection over HBONE and checks both
    identities and the Supervisor's bounding set; then `also(daemon)`."""
    echo = EchoServer(host="127.0.0.2")
    names = ["admin", "stats", "readiness", "inbound", "outbound", "plaintext", "socks5"]
    ports = dict(zip(names, free_ports(len(names))))
    with open(os.path.join(rootfs, "tmp", "local.yaml"), "w") as f:
        f.write(hbone_config(echo.port))
    env = {"LOCAL_XDS_PATH": "/tmp/local.yaml", "UNSTABLE_ENABLE_SOCKS5": "true", "RUST_LOG": "info",
           "ZTUNNEL_ADMIN_ADDR": f"127.0.0.1:{ports['admin']}", "ZTUNNEL_STATS_ADDR": f"127.0.0.1:{ports['stats']}",
           "ZTUNNEL_READINESS_ADDR": f"127.0.0.1:{ports['readiness']}", "ZTUNNEL_INBOUND_ADDR": f"[::]:{ports['inbound']}",
           "ZTUNNEL_HBONE_PORT": str(ports["inbound"]), "ZTUNNEL_OUTBOUND_ADDR": f"127.0.0.1:{ports['outbound']}",
           "ZTUNNEL_INBOUND_PLAINTEXT_ADDR": f"127.0.0.1:{ports['plaintext']}",
           "ZTUNNEL_SOCKS5_ADDR": f"127.0.0.1:{ports['socks5']}"}
    log = tempfile.NamedTemporaryFile(prefix="ztunnel-image-", suffix=".log", delete=False)
    daemon = subprocess.Popen(["/usr/local/bin/ztunnel", "proxy", "ztunnel"], env=env, stdout=log, stderr=log,
                              stdin=subprocess.DEVNULL,
                              preexec_fn=pod_seccomp.preexec(before=enter))
    try:
        _wait_ready(daemon, ports["readiness"], log, "readiness of the daemon run from the image")
        sock, code = socks5_connect(ports["socks5"], 80, "10.96.0.9", source="127.0.0.3")
        with sock:
            assert code == 0, open(log.name).read()[-4000:]
            assert round_trip(sock, b"from the image") == b"from the image"
        line = wait_for(lambda: next((l for l in open(log.name).read().splitlines()
                                      if "\taccess\tconnection complete" in l and "direction=outbound" in l), None),
                        10, "the outbound access line")
        assert "src.identity=spiffe://cluster.local/ns/default/sa/client" in line
        assert "dst.identity=spiffe://cluster.local/ns/shop/sa/echo" in line
        # The root stayed read-only, and the Supervisor ran with no capability beyond the chart's.
        with open(f"/proc/{daemon.pid}/status") as f:
            bounding = int(next(l for l in f if l.startswith("CapBnd:")).split()[1], 16)
        assert bounding == sum(1 << c for c in KEPT.values()), hex(bounding)
        if also is not None:
            also(daemon)
    finally:
        _stop(daemon)
        echo.close()
        os.unlink(log.name)


# -- the DaemonSet as deploy/daemonset.yaml writes it ----------------------------------------

MANIFEST = os.path.join(ROOT, "deploy", "daemonset.yaml")
FIELDS = {"metadata.name": "ztunnel-abc", "metadata.namespace": "istio-system", "spec.nodeName": None,
          "status.podIP": "10.0.0.42", "spec.serviceAccountName": "ztunnel"}


def container_spec():
    import yaml
    daemonset = next(d for d in yaml.safe_load_all(open(MANIFEST)) if d["kind"] == "DaemonSet")
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    return container


def manifest_env(container, node):
    """The container's env block as the kubelet resolves it, for a pod on `node`."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item.get("valueFrom", {}):
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            env[item["name"]] = node if path == "spec.nodeName" else FIELDS[path]
        elif "resourceFieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = "2"  # limits.cpu, rounded up to whole CPUs as the kubelet does
        else:
            raise AssertionError(f"env {item['name']}: a source this test does not resolve")
    return env


@pytest.fixture
def pod_mounts(rootfs, tmp_path):
    """Bind mounts over the image's mount points, as the kubelet makes them from the manifest's
    volumes: {mountPath: host directory}. Unmounted afterwards."""
    made = []

    def mount(container_path, host_dir):
        target = os.path.join(rootfs, container_path.lstrip("/"))
        _run("mount", "--bind", host_dir, target)
        made.append(target)
    yield mount
    for target in reversed(made):
        subprocess.run(["umount", target], capture_output=True)


def test_the_daemonset_serves_pods_from_the_image_with_istiod_and_istio_cni(rootfs, pod_mounts, tmp_path, xds):
    """deploy/daemonset.yaml run as the kubelet would, as far as one machine can: the image's
    root read-only, the manifest's args, env block (field references resolved), user and group,
    capabilities, the pod seccomp profile, and its volumes (the istiod root certificate, the
    projected token, the istio-cni socket directory, /tmp). istiod's xDS and CA are the doubles,
    istio-cni is its double with two pods. The daemon comes up in in-pod mode from the manifest
    alone (KUBERNETES_SERVICE_HOST makes the socket path its default), gets both pods'
    certificates from the CA with the token, and carries pod a -> pod b over HBONE.

    The only changes to the manifest: CA_ADDRESS and XDS_ADDRESS name the doubles on loopback
    (istiod.istio-system.svc does not resolve here), and the admin, stats and readiness ports are
    free ports (the daemon shares the test's network namespace instead of having its own)."""
    from identities import MiniCA
    from ca_double import IstioCADouble
    from cni_double import CniDouble
    from mesh_box import MeshBox, require_tools
    import xds_double as x
    require_tools()
    container = container_spec()
    box, cni, ca = MeshBox(pods=2), CniDouble(), IstioCADouble(MiniCA(), str(tmp_path / "ca"))
    log = tempfile.NamedTemporaryFile(prefix="ztunnel-daemonset-", suffix=".log", delete=False)
    daemon = None
    try:
        cni.start()
        ca.start()
        token = "projected-service-account-token"
        ca.require_token(token)
        a, b = box.pods
        for pod in (a, b):
            xds.set_resource(x.ADDRESS, pod.xds_uid, x.address_of_workload(x.workload(
                pod.xds_uid, pod.name, pod.namespace, addresses=[pod.ip], service_account=pod.service_account,
                node=box.node)))
        # The manifest's volumes.
        secrets, tokens = tmp_path / "istio", tmp_path / "tokens"
        secrets.mkdir()
        tokens.mkdir()
        (secrets / "root-cert.pem").write_text(open(xds.root_pem_path).read() + open(ca.root_pem_path).read())
        (tokens / "istio-token").write_text(token)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        pod_mounts(mounts["istiod-ca-cert"], str(secrets))
        pod_mounts(mounts["istio-token"], str(tokens))
        pod_mounts(mounts["cni-ztunnel-sock-dir"], os.path.dirname(cni.path))
        assert os.path.basename(cni.path) == "ztunnel.sock"

        env = manifest_env(container, box.node)
        env.update({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
                    "CA_ADDRESS": f"127.0.0.1:{ca.port}", "XDS_ADDRESS": f"127.0.0.1:{xds.port}"})
        ports = dict(zip(("admin", "stats", "readiness"), free_ports(3)))
        for name, port in ports.items():
            env[f"ZTUNNEL_{name.upper()}_ADDR"] = f"127.0.0.1:{port}"
        assert container["readinessProbe"]["httpGet"] == {"port": 15021, "path": "/healthz/ready"}
        context = container["securityContext"]
        caps = {c.lower() for c in context["capabilities"]["add"]}
        assert caps == set(KEPT) and context["capabilities"]["drop"] == ["ALL"]
        assert context["readOnlyRootFilesystem"] is True  # the rootfs fixture mounts it read-only

        def enter():
            _enter_image(rootfs)
            os.setgroups([])
            os.setgid(context["runAsGroup"])
            os.setuid(context["runAsUser"])
        entrypoint = ["/usr/local/bin/ztunnel"]  # the image's entrypoint; the manifest gives args
        daemon = subprocess.Popen(entrypoint + container["args"], env=env, stdout=log, stderr=log,
                                  stdin=subprocess.DEVNULL, preexec_fn=pod_seccomp.preexec(before=enter))
        wait_for(lambda: cni.connected or daemon.poll() is not None, 60, "the daemon's connection to istio-cni")
        assert daemon.poll() is None, open(log.name).read()[-4000:]
        for pod in (a, b):
            assert cni.add(**pod.info()) == "", f"Add {pod.name}"
        assert cni.snapshot_sent() == ""
        _wait_ready(daemon, ports["readiness"], log, "readiness of the DaemonSet's daemon")
        issued = {u for c in ca.calls if c["error"] is None for u in c["csr_uris"]}
        assert {a.identity, b.identity} <= issued, ca.calls
        stream = xds.streams[xds.wait_for(lambda _, r: r["initial"] and r["type_url"] == x.ADDRESS, 10)["stream"]]
        assert stream["authorization"] == f"Bearer {token}"

        b.echo_server(8080)
        payload = os.urandom(64 * 1024)
        assert a.round_trip(b.ip, 8080, payload, timeout=20) == payload
        line = wait_for(lambda: next((l for l in open(log.name).read().splitlines()
                                      if "\taccess\tconnection complete" in l and "direction=outbound" in l), None),
                        10, "the outbound access line")
        assert f"src.identity={a.identity}" in line and f"dst.identity={b.identity}" in line, line
        with open(f"/proc/{daemon.pid}/status") as f:
            status = dict(l.split(":", 1) for l in f)
        assert int(status["CapBnd"].split()[0], 16) == sum(1 << c for c in KEPT.values())
        assert status["Gid"].split()[0] == str(context["runAsGroup"])
        assert "worker_exit" not in open(log.name).read(), open(log.name).read()[-4000:]
    finally:
        if daemon is not None:
            _stop(daemon)
        cni.stop()
        ca.stop()
        box.cleanup()
        os.unlink(log.name)
