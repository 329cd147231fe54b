import os
import sys

import pytest

# The xDS/CA test doubles run gRPC servers in this process, and every daemon is started by
# fork + a Python preexec_fn. With gRPC's fork support on (its default), the forked child runs
# gRPC's after-fork handler while the parent's gRPC threads are busy; under load that child was
# seen to hang before exec (the daemon never started, its log held only gRPC's "epoll_wait error:
# Bad file descriptor"). Nothing here forks to keep using gRPC, so the handlers are turned off
# before grpc is first imported.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

sys.path.insert(0, os.path.dirname(__file__))
from daemon import Daemon, EchoServer  # noqa: E402


@pytest.fixture
def start_daemon():
    started = []

    def start(**kwargs):
        daemon = Daemon(**kwargs)
        started.append(daemon)
        return daemon

    start.started = started
    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def xds(tmp_path):
    """istiod's delta ADS, as the test double written from the spec (xds_double.py)."""
    pytest.importorskip("grpc")
    import xds_double
    double = xds_double.XdsDouble(str(tmp_path / "xds"))
    double.start()
    yield double
    double.stop()


@pytest.fixture
def echo_server():
    server = EchoServer()
    yield server
    server.close()


def pytest_collection_modifyitems(items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="the integration tests need root (sandbox uid switch, /proc of other uids)")
        for item in items:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach each daemon's debug log and audit events to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        daemons = getattr(item, "funcargs", {}).get("start_daemon")
        for daemon in getattr(daemons, "started", []):
            report.sections.append((f"ztunnel {daemon.pid} log", daemon.log()[-20000:]))
            report.sections.append((f"ztunnel {daemon.pid} audit", "\n".join(map(str, daemon.audit()))[-20000:]))
