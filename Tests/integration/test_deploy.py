"""The deployment files (issue #10) agree with each other and with the daemon:

- deploy/seccomp/ztunnel-swift.json is what scripts/gen-pod-seccomp.py makes from the role
  profiles and security/pod/supervisor.json, and admits every syscall any worker profile admits
  (the kernel stacks the two filters; a worker's call must pass both). That the daemon runs under
  it is shown by every other integration test: each daemon runs under it (pod_seccomp.py).
- deploy/helm/values.yaml and deploy/daemonset.yaml grant the same securityContext, and exactly
  the capabilities the Supervisor keeps (test_image checks the running Supervisor's bounding set
  against the same list); every env var they set is one the daemon reads (`ztunnel --help`) or one
  upstream's chart sets that has no meaning here, listed with the reason.
- deploy/helm/ztunnel-chart.patch is a well-formed patch whose added template renders the
  securityContext value.
- deploy/apparmor/ztunnel-swift compiles with apparmor_parser (loading it needs a kernel with
  AppArmor: test_image.py runs the image under it where there is one)."""
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from daemon import ROOT, ZTUNNEL
from test_image import KEPT

DEPLOY = os.path.join(ROOT, "deploy")
# Set by the upstream chart, read by upstream ztunnel or its runtime only.
UPSTREAM_ONLY = {
    "RUST_BACKTRACE": "the Rust runtime's backtraces; a Swift worker's crash is reported by the Supervisor",
    "INPOD_ENABLED": "legacy, unread by current upstream ztunnel too (ISTIO_COMPAT §1); in-pod mode follows INPOD_UDS",
}


def load_yaml(*path):
    return list(yaml.safe_load_all(open(os.path.join(DEPLOY, *path))))


def daemonset_container():
    daemonset = next(d for d in load_yaml("daemonset.yaml") if d and d["kind"] == "DaemonSet")
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    return daemonset, container


def known_settings():
    text = subprocess.run([ZTUNNEL, "--help"], capture_output=True, text=True, timeout=30).stdout
    names = set(re.findall(r"^  ([A-Z][A-Z0-9_]+)  --", text, re.M))
    assert len(names) > 40, text[:2000]
    return names


def test_the_pod_seccomp_profile_is_generated_and_covers_every_role():
    check = subprocess.run([os.path.join(ROOT, "scripts", "gen-pod-seccomp.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    pod = json.load(open(os.path.join(DEPLOY, "seccomp", "ztunnel-swift.json")))
    assert pod["defaultAction"] == "SCMP_ACT_ERRNO" and pod["defaultErrnoRet"] == 1
    allowed = {n for r in pod["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    for role in ("cert-worker", "net-worker", "xds-worker"):
        profile = json.load(open(os.path.join(ROOT, "security", "seccomp", f"{role}.json")))
        missing = {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]} - allowed
        assert not missing, f"{role}: allowed by its profile but refused by the pod's: {sorted(missing)}"
    # One syscall per rule, each with its reasons (the Supervisor's and each role's).
    assert all(len(r["names"]) == 1 and r.get("comment") for r in pod["syscalls"])
    # Never in the pod at all: what no process of the daemon does.
    for name in ("ptrace", "process_vm_readv", "mount", "umount2", "pivot_root", "unshare", "bpf", "kexec_load",
                 "init_module", "finit_module", "open_by_handle_at", "userfaultfd", "perf_event_open", "keyctl"):
        assert name not in allowed, name


def test_values_and_manifest_grant_the_same_context_and_only_the_supervisors_capabilities():
    values = load_yaml("helm", "values.yaml")[0]
    daemonset, container = daemonset_container()
    context = container["securityContext"]
    assert values["securityContext"] == context
    assert context["capabilities"]["drop"] == ["ALL"]
    assert {c.lower() for c in context["capabilities"]["add"]} == set(KEPT)
    assert context["readOnlyRootFilesystem"] is True and context["privileged"] is False
    assert context["seccompProfile"] == {"type": "Localhost", "localhostProfile": "ztunnel-swift.json"}
    assert os.path.exists(os.path.join(DEPLOY, "seccomp", context["seccompProfile"]["localhostProfile"]))
    apparmor = context["appArmorProfile"]["localhostProfile"]
    assert re.search(rf"^profile {re.escape(apparmor)} ", open(os.path.join(DEPLOY, "apparmor", apparmor)).read(), re.M)
    assert values["image"] == container["image"] and "/" in values["image"]  # the chart's full-reference rule
    pod = daemonset["spec"]["template"]
    for key, value in values["podAnnotations"].items():
        assert pod["metadata"]["annotations"][key] == value
    assert container["name"] == "istio-proxy"  # the name upstream's chart and its annotations use
    assert container["args"] == ["proxy", "ztunnel"]
    assert container["readinessProbe"]["httpGet"] == {"port": 15021, "path": "/healthz/ready"}
    assert pod["spec"]["serviceAccountName"] == "ztunnel"


def test_every_env_var_is_read_by_the_daemon_or_listed_as_upstreams():
    known = known_settings()
    _, container = daemonset_container()
    values = load_yaml("helm", "values.yaml")[0]
    names = [e["name"] for e in container["env"]] + list(values.get("env", {}))
    unknown = [n for n in names if n not in known and n not in UPSTREAM_ONLY]
    assert not unknown, f"set by the deployment but read by nothing: {unknown}"
    # The token and root certificate are where the daemon looks by default (it runs from /).
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    help_text = subprocess.run([ZTUNNEL, "--help"], capture_output=True, text=True, timeout=30).stdout
    assert f"default: .{mounts['istio-token']}/istio-token" in help_text
    assert f"default: .{mounts['istiod-ca-cert']}/root-cert.pem" in help_text
    assert f"{mounts['cni-ztunnel-sock-dir']}/ztunnel.sock" in help_text


def test_the_chart_patch_is_well_formed_and_renders_the_value(tmp_path):
    patch = open(os.path.join(DEPLOY, "helm", "ztunnel-chart.patch")).read()
    body = patch[patch.index("--- a/"):]
    # Rebuild the patched file's original side from the hunks (context and removed lines), then
    # apply the patch to it: every hunk must parse and apply cleanly.
    original = []
    for line in body.splitlines()[2:]:
        if line.startswith("@@"):
            continue
        if line.startswith((" ", "-")):
            original.append(line[1:])
    target = tmp_path / "templates" / "daemonset.yaml"
    target.parent.mkdir()
    target.write_text("\n".join(original) + "\n")
    result = subprocess.run(["patch", "-p1", "-d", str(tmp_path), "--dry-run"], input=body, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    added = [l[1:] for l in body.splitlines() if l.startswith("+") and not l.startswith("+++")]
    assert any(".Values.securityContext" in l and "toYaml" in l for l in added), added


def test_the_apparmor_profile_compiles():
    parser = shutil.which("apparmor_parser")
    if parser is None:
        pytest.skip("apparmor_parser is not installed: `make deps` installs it (Debian package apparmor)")
    result = subprocess.run([parser, "--skip-kernel-load", "--skip-cache", "-o", "/dev/null",
                             os.path.join(DEPLOY, "apparmor", "ztunnel-swift")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
