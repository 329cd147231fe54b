"""Network namespaces for integration tests that need more than loopback: each test gets its own,
made and removed by name, and code can run inside one from a thread (setns applies per thread,
and a socket keeps the namespace it was made in)."""
import ctypes
import os
import subprocess
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter(netns_path):
    """Moves the calling thread into the namespace at `netns_path` (for a thread of its own)."""
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def in_netns(netns_path, fn, *args):
    """Runs fn(*args) on a thread that has entered the namespace at `netns_path`; returns its
    result or raises its error. Sockets made there keep that namespace."""
    result = {}

    def body():
        enter(netns_path)
        try:
            result["value"] = fn(*args)
        except BaseException as error:  # handed to the caller
            result["error"] = error

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


class Netns:
    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *args):
        subprocess.run(["ip", "netns", "exec", self.name, *args], check=True, capture_output=True)

    def call(self, fn, *args):
        """Runs fn(*args) on a thread inside the namespace; returns its result or raises its error."""
        return in_netns(f"/run/netns/{self.name}", fn, *args)

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)
