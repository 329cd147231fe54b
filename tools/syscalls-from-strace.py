#!/usr/bin/env python3
"""Lists, per worker binary, the syscalls its threads made after the seccomp filter was installed.

Input: one `strace -f -o FILE` trace of the whole daemon (lines start with the thread id).
Use it when a new code path needs a syscall: run the daemon under strace in
ZTUNNEL_SECCOMP_MODE=audit, exercise the path, then compare this list with security/seccomp/.
"""
import re
import sys
from collections import defaultdict

line_re = re.compile(r'^(\d+)\s+(?:<\.\.\. )?([a-z_0-9]+)(?:\(| resumed>)')
clone_re = re.compile(r'^(\d+)\s+(clone3?|vfork|fork)\((.*)\)\s+=\s+(\d+)')
resumed_clone_re = re.compile(r'^(\d+)\s+<\.\.\. (clone3?|vfork) resumed>(.*)\)\s+=\s+(\d+)')
exec_re = re.compile(r'^(\d+)\s+execve\("([^"]+)"')

owner = {}      # tid -> process key (tgid)
binary = {}     # tgid -> binary basename
confined = set()
used = defaultdict(set)
pending_clone_flags = {}

for raw in open(sys.argv[1], errors="replace"):
    m = exec_re.match(raw)
    if m:
        tid = int(m.group(1))
        owner[tid] = tid
        binary[tid] = m.group(2).rsplit("/", 1)[-1]
        continue
    m = clone_re.match(raw) or resumed_clone_re.match(raw)
    if m:
        parent, flags, child = int(m.group(1)), m.group(3), int(m.group(4))
        if "<unfinished" not in raw:
            if "CLONE_THREAD" in flags or "CLONE_THREAD" in pending_clone_flags.get(parent, ""):
                owner[child] = owner.get(parent, parent)
            else:
                owner[child] = child
                binary.setdefault(child, binary.get(owner.get(parent, parent), "?"))
    if " clone" in raw and "<unfinished" in raw:
        pending_clone_flags[int(raw.split()[0])] = raw
    m = line_re.match(raw)
    if not m:
        continue
    tid, name = int(m.group(1)), m.group(2)
    tgid = owner.setdefault(tid, tid)
    if name == "seccomp" and "SECCOMP_SET_MODE_FILTER" in raw and "filter=" in raw:
        confined.add(tgid)
        continue
    if tgid in confined:
        used[binary.get(tgid, "?")].add(name)

for name in sorted(used):
    print(name + ":", " ".join(sorted(used[name])))
