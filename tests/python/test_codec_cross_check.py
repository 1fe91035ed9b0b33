"""kvring's msgpack encoder and decoder against an independent implementation
(Debian's python3-msgpack), through the `kvring encode` / `kvring decode` CLI.

The golden vectors (tests/data/lmcache-msgspec) pin kvring to msgspec's exact
bytes; this cross-check catches what the vectors cannot: messages of shapes
and sizes that no vector has (many ops, negative and >2^63 keys, long
strings), read back by a msgpack library that shares no code with kvring.

Run by ctest (CMakeLists.txt) with KVRING_CLI set.
"""
import json
import os
import subprocess

import msgpack

KVRING_CLI = os.environ.get("KVRING_CLI", "build/release/kvring")


def kvring_encode(objects):
    lines = "".join(json.dumps(o) + "\n" for o in objects)
    r = subprocess.run([KVRING_CLI, "encode"], input=lines.encode(), capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def kvring_decode(data):
    r = subprocess.run([KVRING_CLI, "decode"], input=data, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


def kv_batch(n):
    ops = []
    for i in range(n):
        key = -i * 1000003 if i % 3 else (1 << 64) - 1 - i  # negative, and above int64 (msgspec: uint64)
        ops.append({"op_type": "evict" if i % 2 else "admit", "key": key, "seq_num": i})
    return {"type": "BatchedKVOperationMsg", "instance_id": "inst-" + "x" * 300, "worker_id": 3,
            "location": "LocalCPUBackend", "operations": ops}


def test_msgpack_reads_what_kvring_writes():
    message = kv_batch(70000)  # > 65535 ops: the array 32 header
    data = kvring_encode([message])
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    (decoded,) = list(unpacker)
    # msgspec writes the tag first, then the fields in declaration order.
    assert list(decoded.keys()) == ["type", "instance_id", "worker_id", "location", "operations"]
    assert decoded["type"] == "BatchedKVOperationMsg"
    assert decoded["instance_id"] == message["instance_id"]
    assert decoded["worker_id"] == 3
    assert len(decoded["operations"]) == 70000
    for got, want in zip(decoded["operations"], message["operations"]):
        assert got == want


def test_kvring_reads_what_msgpack_writes():
    message = kv_batch(3000)
    data = msgpack.packb(message, use_bin_type=True)
    (decoded,) = kvring_decode(data)
    assert decoded == message


def test_the_two_agree_on_every_integer_width():
    edges = [0, 1, 127, 128, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, (1 << 64) - 1,
             -1, -32, -33, -128, -129, -32768, -32769, -(1 << 31), -(1 << 31) - 1, -(1 << 63)]
    message = {"type": "BatchedKVOperationMsg", "instance_id": "i", "worker_id": 0, "location": "L",
               "operations": [{"op_type": "admit", "key": k, "seq_num": 0} for k in edges]}
    data = kvring_encode([message])
    # Both pick the smallest encoding for each integer: the bytes are the same.
    assert data == msgpack.packb(message, use_bin_type=True)
    assert kvring_decode(data) == [message]
