"""kvring.lmcache: LMCache's worker-side controller client over kvring's rings.

LMCache's engine talks to its cache controller through one object,
`lmcache.v1.cache_controller.worker.LMCacheWorker`: it registers, queues
messages (`put_msg`: KV admits/evicts, deregistration), asks and waits
(`async_put_and_wait_msg`: P2P lookups, ...), heartbeats, and runs the
controller's commands (clear, pin, compress, move, health) on the engine.
`KvringLMCacheWorker` has the same methods and constructor, and moves all of it
over shared memory to a kvringd on the same machine instead of ZeroMQ:

    # in LMCache's engine set-up, where the worker is created:
    from kvring.lmcache import KvringLMCacheWorker as LMCacheWorker
    worker = LMCacheWorker(config, metadata, lmcache_engine)      # unchanged call

The controller is the kvringd named by $KVRING_CONTROLLER (default "kvring")
or the `controller` argument. A full sync the controller asks for lists the
keys of the engine's LocalCPUBackend (`storage_manager.local_cpu_backend`), as
LMCache's FullSyncSender does, unless `keys_of` is given. Messages may be LMCache's msgspec structs (then
msgspec, which LMCache depends on, encodes them) or dicts in msgspec's
to_builtins shape. Replies of async_put_and_wait_msg come back as LMCache's
structs when lmcache is importable, else as dicts.
"""
import asyncio
import os

import kvring


def _as_dict(msg):
    if isinstance(msg, dict):
        return msg
    if hasattr(msg, "__struct_fields__"):  # a msgspec Struct (LMCache's messages)
        import msgspec
        return kvring.decode(msgspec.msgpack.encode(msg))
    raise TypeError("a message must be an LMCache msgspec struct or a dict, not %s" % type(msg).__name__)


def _as_lmcache(reply):
    """The reply as LMCache's own struct when lmcache is importable and its
    version has that message; else the dict."""
    try:
        import msgspec
        from lmcache.v1.cache_controller.message import Msg
    except ImportError:
        return reply
    try:
        return msgspec.msgpack.decode(kvring.encode(reply), type=Msg)
    except msgspec.ValidationError:  # an LMCache without this message type
        return reply


def _hot_cache_keys_of(lmcache_engine):
    """keys_of for a full sync, as LMCache's FullSyncSender lists them: the
    chunk hashes of the engine's LocalCPUBackend, the location named by
    str(backend). None when the engine has no such backend."""
    backend = getattr(getattr(lmcache_engine, "storage_manager", None), "local_cpu_backend", None)
    if backend is None or not hasattr(backend, "get_keys"):
        return None

    def keys_of(location):
        if location != str(backend):
            return []
        return [k.chunk_hash for k in backend.get_keys()]
    return keys_of


class KvringLMCacheWorker:
    """LMCacheWorker's interface over kvring's shared-memory rings."""

    def __init__(self, config, metadata, lmcache_engine, controller=None, keys_of=None, **worker_options):
        self.lmcache_instance_id = config.lmcache_instance_id
        assert self.lmcache_instance_id is not None
        self.worker_id = metadata.worker_id
        self.lmcache_engine = lmcache_engine
        port = getattr(config, "lmcache_worker_port", None) or 0
        self.lmcache_worker_port = port + self.worker_id if port else 0
        self.controller = controller or os.environ.get("KVRING_CONTROLLER", "kvring")
        peer = getattr(config, "p2p_init_url", None) or getattr(config, "distributed_url", None)
        engine = lmcache_engine
        if keys_of is None:
            keys_of = _hot_cache_keys_of(lmcache_engine)

        def on_clear(m):
            return engine.clear(locations=[m["location"]])

        def on_pin(m):
            return engine.lookup(tokens=m["tokens"], search_range=[m["location"]], request_id=m["worker_event_id"],
                                 pin=True)

        def on_compress(m):
            return engine.compress(tokens=m["tokens"], method=m["method"], location=m["location"],
                                   event_id=m["worker_event_id"])

        def on_decompress(m):
            return engine.decompress(tokens=m["tokens"], method=m["method"], location=m["location"],
                                     event_id=m["worker_event_id"])

        def on_move(m):
            return engine.move(tokens=m["tokens"], old_position=m["old_position"],
                               new_position=tuple(m["new_position"]), event_id=m["worker_event_id"],
                               do_copy=m["copy"])

        def on_health(m):
            return engine.health()

        self._worker = kvring.Worker(self.controller, self.lmcache_instance_id, self.worker_id, peer_init_url=peer,
                                     port=self.lmcache_worker_port, keys_of=keys_of, on_clear=on_clear,
                                     on_pin=on_pin, on_compress=on_compress, on_decompress=on_decompress,
                                     on_move=on_move, on_health=on_health, **worker_options)

    def register(self):
        """The kvring Worker registered when it attached: nothing more to send."""

    def deregister(self):
        if not self._worker.closed:
            self._worker.close()

    def put_msg(self, msg):
        """Queues one of LMCache's worker messages: KVAdmitMsg, KVEvictMsg,
        BatchedKVOperationMsg (sent in batches), DeRegisterMsg."""
        m = _as_dict(msg)
        kind = m.get("type")
        if kind == "KVAdmitMsg":
            self._worker.admit(m["location"], [m["key"]])
        elif kind == "KVEvictMsg":
            self._worker.evict(m["location"], [m["key"]])
        elif kind == "BatchedKVOperationMsg":
            loc = m["location"]
            for op in m["operations"]:  # in order: admits and evicts interleave
                (self._worker.admit if op["op_type"] == "admit" else self._worker.evict)(loc, [op["key"]])
        elif kind == "DeRegisterMsg":
            self.deregister()
        elif kind == "RegisterMsg":
            pass  # registered at attach
        else:
            raise ValueError("put_msg: %s is not a message a worker queues" % kind)

    async def async_put_and_wait_msg(self, msg):
        """Sends a request and waits for its reply without blocking the event
        loop (the wait runs on an executor thread, the GIL released)."""
        m = _as_dict(msg)
        loop = asyncio.get_running_loop()
        if m.get("type") == "BatchedP2PLookupMsg":
            layout = await loop.run_in_executor(None, self._worker.lookup, m["hashes"], 5.0)
            return _as_lmcache({"type": "BatchedP2PLookupRetMsg", "layout_info": [list(t) for t in layout]})
        if m.get("type") == "HeartbeatMsg":
            await loop.run_in_executor(None, self._worker.heartbeat)
            return _as_lmcache({"type": "HeartbeatRetMsg", "commands": []})
        raise ValueError("async_put_and_wait_msg: %s is not a request kvring's worker sends" % m.get("type"))

    def heartbeat(self):
        self._worker.heartbeat()

    def close(self):
        self.deregister()
