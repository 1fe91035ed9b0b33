#!/usr/bin/env python3
"""kvring's Python module, measured from Python against the path LMCache's
workers take (a ZeroMQ DEALER/ROUTER round trip), in one run:

  - lookup_32: a 32-hash BatchedP2PLookupMsg round trip through kvring.Worker
    (shared memory) against a real kvringd; p50/p99 over many lookups;
  - zmq_floor_32: the same request's msgpack bytes over a bare pyzmq DEALER to
    a ROUTER in another process that answers at once with a fixed reply (no
    controller logic at all: the floor of the ZeroMQ path LMCache uses);
  - admits_numpy: admits/s from a 1 M-element numpy uint64 array
    (kvring.Worker.admit + flush, timed until the controller applied them all);
  - floor_pingpong: the bare cache-line ping-pong between two processes
    (e2e_bench's BM_Floor_CacheLinePingPong, run in the same round): the
    floor of any shared-memory round trip on this machine;
  - lookup_32_busy, zmq_floor_32_busy: lookup_32 and zmq_floor_32 again with
    --busy processes spinning on the CPU (more busy processes than cores).

Google Benchmark measures the C++ side (bench/*.cc); this measures what a
Python caller sees. Each figure: the median of --rounds rounds.

Usage: python3 bench/python_bench.py --kvringd build/release/kvringd --cli build/release/kvring
       (PYTHONPATH=build/release/python; Debian's python3 with python3-zmq, -msgpack, -numpy)
"""
import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time

import msgpack
import numpy as np
import zmq

import kvring

LOC = "LocalCPUBackend"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def percentiles(samples_ns):
    s = sorted(samples_ns)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


def bench_lookup(controller, n):
    with kvring.Worker(controller, "holder", 0, peer_init_url="h:1") as holder, \
            kvring.Worker(controller, "asker", 0) as w:
        hashes = list(range(1, 33))
        holder.admit(LOC, hashes)
        holder.flush()
        while w.lookup(hashes, timeout=2)[0][2] != 32:
            pass  # the holder's batch is applied
        arr = np.array(hashes, dtype=np.uint64)
        for _ in range(2000):
            w.lookup(arr, timeout=2)
        out = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            w.lookup(arr, timeout=2)
            out.append(clock() - t0)
        return percentiles(out)


def router_echo(endpoint_q, reply):
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    endpoint_q.put(port)
    while True:
        frames = s.recv_multipart()
        if frames[-1] == b"stop":
            break
        s.send_multipart(frames[:-1] + [reply])


def bench_zmq_floor(n):
    request = msgpack.packb({"type": "BatchedP2PLookupMsg", "hashes": list(range(1, 33)), "instance_id": "asker",
                             "worker_id": 0})
    reply = msgpack.packb({"type": "BatchedP2PLookupRetMsg", "layout_info": [["holder", LOC, 32, "h:1"]]})
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=router_echo, args=(q, reply), daemon=True)
    p.start()
    port = q.get(timeout=10)
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.connect("tcp://127.0.0.1:%d" % port)
    for _ in range(2000):
        d.send_multipart([b"", request])
        msgpack.unpackb(d.recv_multipart()[-1])
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        d.send_multipart([b"", request])  # what LMCache's worker does: encode, send, receive, decode
        msgpack.unpackb(d.recv_multipart()[-1])
        out.append(clock() - t0)
    d.send_multipart([b"", b"stop"])
    p.join(timeout=10)
    d.close(0)
    ctx.term()
    return percentiles(out)


def bench_admits(controller, cli, n):
    keys = np.arange(1, n + 1, dtype=np.uint64)
    with kvring.Worker(controller, "ingest", 0, batch_ops=256) as w, kvring.Orchestrator(controller) as orch:
        before = orch.stats()["kv_ops_total"]
        t0 = time.perf_counter()
        w.admit(LOC, keys)
        w.flush()
        while orch.stats()["kv_ops_total"] - before < n:  # until the controller applied them all
            pass
        dt = time.perf_counter() - t0
        w.evict(LOC, keys)
        w.flush()
    return n / dt


def spin():
    while True:
        pass


def busy(bench, n_busy):
    """bench() while n_busy processes spin on the CPU."""
    procs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(n_busy)]
    for p in procs:
        p.start()
    try:
        return bench()
    finally:
        for p in procs:
            p.terminate()
            p.join()


def bench_floor(e2e_bench):
    r = subprocess.run([e2e_bench, "--benchmark_filter=BM_Floor_CacheLinePingPong", "--benchmark_format=json"],
                       capture_output=True, text=True, timeout=120, check=True)
    b = json.loads(r.stdout)["benchmarks"][0]
    return b["p50_ns"], b["p99_ns"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvringd", default="build/release/kvringd")
    ap.add_argument("--cli", default="build/release/kvring")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lookups", type=int, default=20000)
    ap.add_argument("--admits", type=int, default=1_000_000)
    ap.add_argument("--e2e-bench", default="build/release/e2e_bench", help="for the ping-pong floor")
    ap.add_argument("--busy", type=int, default=4, help="spinning processes for the *_busy rows")
    a = ap.parse_args()
    name = "pybench%d" % os.getpid()
    daemon = subprocess.Popen([a.kvringd, "--name", name, "--stats-interval", "0"], stderr=subprocess.DEVNULL)
    try:
        subprocess.run([a.cli, "stats", "--name", name, "--timeout", "10000"], check=True, capture_output=True)
        rows = {"floor_pingpong": [], "lookup_32": [], "zmq_floor_32": [], "lookup_32_busy": [], "zmq_floor_32_busy": [],
                "admits_numpy": []}
        for _ in range(a.rounds):
            rows["floor_pingpong"].append(bench_floor(a.e2e_bench))
            rows["lookup_32"].append(bench_lookup(name, a.lookups))
            rows["zmq_floor_32"].append(bench_zmq_floor(a.lookups))
            rows["lookup_32_busy"].append(busy(lambda: bench_lookup(name, a.lookups // 4), a.busy))
            rows["zmq_floor_32_busy"].append(busy(lambda: bench_zmq_floor(a.lookups // 4), a.busy))
            rows["admits_numpy"].append(bench_admits(name, a.cli, a.admits))
        print("CPU: %s, %d cores; python %s; %d rounds, medians" % (cpu_name(), os.cpu_count(), sys.version.split()[0],
                                                                  a.rounds))
        for key in ("floor_pingpong", "lookup_32", "zmq_floor_32", "lookup_32_busy", "zmq_floor_32_busy"):
            p50 = statistics.median(r[0] for r in rows[key]) / 1000
            p99 = statistics.median(r[1] for r in rows[key]) / 1000
            print("%-14s p50 %7.2f us  p99 %7.2f us   rounds p50: %s" %
                  (key, p50, p99, ", ".join("%.2f" % (r[0] / 1000) for r in rows[key])))
        adm = statistics.median(rows["admits_numpy"])
        print("%-14s %.2f M admits/s   rounds: %s" % ("admits_numpy", adm / 1e6,
                                                       ", ".join("%.2f" % (x / 1e6) for x in rows["admits_numpy"])))
        print(json.dumps({k: v for k, v in rows.items()}))
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


if __name__ == "__main__":
    main()
