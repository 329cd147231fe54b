"""The pod's seccomp profile (deploy/seccomp/ztunnel-swift.json, issue #10) applied the way a
container runtime applies a Localhost profile: a filter loaded just before the entrypoint's
execve, inherited by every process the daemon starts, with each worker's own filter stacked on it.

Every daemon the integration tests start runs under it (daemon.Daemon, test_image), so the whole
suite checks that the profile admits everything the daemon does. ZTUNNEL_TEST_POD_SECCOMP picks
the default action for what the profile does not list:
  kill (default)  SCMP_ACT_KILL_PROCESS: a gap in the list kills the process and the test fails
                  (the kernel logs `type=1326 ... syscall=N`), so gaps cannot hide
  errno           the profile as deployed (EPERM)
  log             SCMP_ACT_LOG: allowed, but logged with the syscall number (for finding gaps)
  off             no filter
The loader goes through libseccomp with ctypes (no Python binding needed) and refuses what it
does not implement (argument conditions) rather than dropping it."""
import ctypes
import ctypes.util
import json
import os

from daemon import ROOT

PROFILE = os.path.join(ROOT, "deploy", "seccomp", "ztunnel-swift.json")
MODE = os.environ.get("ZTUNNEL_TEST_POD_SECCOMP", "kill")
if MODE not in ("kill", "errno", "log", "off"):
    raise SystemExit(f"ZTUNNEL_TEST_POD_SECCOMP={MODE!r}: use kill, errno, log or off")

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_CTL_NNP = 3


def _errno(code):
    return 0x00050000 | (code & 0xFFFF)


_lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
_lib.seccomp_init.restype = ctypes.c_void_p
_lib.seccomp_init.argtypes = [ctypes.c_uint32]
_lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
_lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
_lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
_lib.seccomp_load.argtypes = [ctypes.c_void_p]
_lib.seccomp_release.argtypes = [ctypes.c_void_p]


def _action(name, rule):
    if name == "SCMP_ACT_ALLOW":
        return SCMP_ACT_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return _errno(rule.get("errnoRet", rule.get("defaultErrnoRet", 1)))
    if name == "SCMP_ACT_KILL_PROCESS":
        return SCMP_ACT_KILL_PROCESS
    raise ValueError(f"pod profile: action {name} is not implemented by this loader")


def compile_rules(mode=MODE, path=PROFILE):
    """(default action, [(syscall number, action)]) for the profile, resolved before the fork so
    the child only has to load it."""
    profile = json.load(open(path))
    if mode not in ("kill", "errno", "log"):
        raise ValueError(f"pod profile mode {mode!r}")
    if mode == "kill":
        default = SCMP_ACT_KILL_PROCESS
    elif mode == "log":
        default = SCMP_ACT_LOG
    else:
        default = _errno(profile.get("defaultErrnoRet", 1)) if profile["defaultAction"] == "SCMP_ACT_ERRNO" \
            else _action(profile["defaultAction"], profile)
    rules = []
    for rule in profile["syscalls"]:
        if rule.get("args") or rule.get("includes") or rule.get("excludes"):
            raise ValueError(f"pod profile: {rule['names']}: conditions are not implemented by this loader")
        action = _action(rule["action"], rule)
        for name in rule["names"]:
            number = _lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                raise ValueError(f"pod profile: unknown syscall {name}")
            rules.append((number, action))
    return default, rules


def load(compiled):
    """In the child, just before exec: loads the filter (without setting no_new_privs: the
    chart's container allows privilege escalation only where it says so; the caller sets it)."""
    default, rules = compiled
    ctx = _lib.seccomp_init(default)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        if _lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0) != 0:
            raise OSError("seccomp_attr_set(CTL_NNP) failed")
        for number, action in rules:
            if action == default:
                continue
            rc = _lib.seccomp_rule_add(ctx, action, number, 0)
            if rc != 0:
                raise OSError(-rc, f"seccomp_rule_add({number})")
        rc = _lib.seccomp_load(ctx)
        if rc != 0:
            raise OSError(-rc, "seccomp_load")
    finally:
        _lib.seccomp_release(ctx)


CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_SLAVE = 0x1000, 0x4000, 0x80000


def preexec(netns_name=None, before=None, mode=None, etc=None):
    """A preexec_fn for subprocess: optionally enter the named network namespace as `ip netns
    exec` does (its /etc/netns/<name>/ files bind-mounted over /etc in a mount namespace of the
    child's own), run `before` (chroot, capability bounding set), then load the pod profile as
    the runtime would. `etc`: {name: file} bind-mounted over /etc/<name> the same way (a
    resolv.conf of the test's own). Returns None when ZTUNNEL_TEST_POD_SECCOMP=off and there is
    nothing else to do; else the function, whose `netns_fd` the caller closes after the fork."""
    mode = mode or MODE
    compiled = None if mode == "off" else compile_rules(mode)
    if compiled is None and netns_name is None and before is None and not etc:
        return None
    fd, etc_files = None, [(source.encode(), os.path.join("/etc", name).encode()) for name, source in (etc or {}).items()]
    if netns_name is not None:
        fd = os.open(f"/run/netns/{netns_name}", os.O_RDONLY | os.O_CLOEXEC)
        etc = f"/etc/netns/{netns_name}"
        if os.path.isdir(etc):
            etc_files += [(os.path.join(etc, n).encode(), os.path.join("/etc", n).encode()) for n in os.listdir(etc)]
    libc = ctypes.CDLL(None, use_errno=True)

    def run():
        if fd is not None:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "setns")
        if etc_files:
            if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_SLAVE | MS_REC, None) != 0:
                raise OSError(ctypes.get_errno(), "mount namespace")
            for source, target in etc_files:
                if libc.mount(source, target, None, MS_BIND, None) != 0:
                    raise OSError(ctypes.get_errno(), f"bind {source!r}")
        if before is not None:
            before()
        if compiled is not None:
            load(compiled)
    run.netns_fd = fd
    return run
