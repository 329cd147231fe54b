"""What the benchmark scripts share: the release binaries, the integration tests' helpers, and
memory as the kernel accounts it."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "Tests", "integration"))
os.environ.setdefault("ZTUNNEL_BIN_DIR", os.path.join(ROOT, ".build", "release"))


def pss_kib(pid):
    """Proportional set size of `pid` in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
