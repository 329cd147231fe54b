#!/usr/bin/env python3
"""Runs HBONE-style mTLS handshakes against 15008 from several threads and prints the rate.

  python3 tools/handshake_burst.py PORT CLIENT_DIR [THREADS] [PER_THREAD]

CLIENT_DIR holds cert-chain.pem, key.pem and root-cert.pem of a client identity trusted by the
daemon (see Tests/integration/identities.py). A figure for a benchmark, not a test.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Tests", "integration"))
from test_identity import handshake  # noqa: E402


def main():
    port, client = int(sys.argv[1]), sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    per_thread = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    results = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def run():
        for _ in range(per_thread):
            try:
                handshake(port, client)
                outcome = "ok"
            except Exception:  # a failed handshake is counted, not fatal
                outcome = "failed"
            with lock:
                results[outcome] += 1

    start = time.monotonic()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - start
    print(f"handshakes ok={results['ok']} failed={results['failed']} in {elapsed:.1f}s: {results['ok'] / elapsed:.0f}/s")


if __name__ == "__main__":
    main()
