"""Shared by the Python test suites (test_zmq_front.py, test_module.py)."""
import json
import os
import subprocess
import time

SHM_WORKER_TOOL = os.environ.get("SHM_WORKER_TOOL", "build/release/shm_worker_tool")


def wait_for(cond, timeout=10.0, what="condition"):
    """Polls `cond` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.01)


class ShmWorker:
    """A C++ worker on shared memory (tests/shm_worker_tool.cc), driven line by line."""

    def __init__(self, controller, instance, wid, peer):
        self.p = subprocess.Popen([SHM_WORKER_TOOL, controller, instance, str(wid), peer], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert json.loads(self.p.stdout.readline()).get("ok"), "the C++ worker did not attach"

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


def lookup_until(lookup, want, timeout=10.0):
    """Another client's lookup may overtake a worker's events (the controller
    serves requests ahead of bulk): polls `lookup()` until it answers `want`
    (or fails with the last answer)."""
    last = [None]

    def ok():
        last[0] = lookup()
        return last[0] == want
    try:
        wait_for(ok, timeout, "lookup %s" % (want,))
    except AssertionError:
        raise AssertionError("lookup answered %s, expected %s" % (last[0], want))
