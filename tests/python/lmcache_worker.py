"""A worker that behaves on the wire as LMCache's LMCacheWorker does.

Written from the facts in the reference (lmcache-controller.md §1-§3), not from
LMCache's code: messages are msgspec's tagged structs (a msgpack map, the tag
under "type" first, then the fields in declaration order), and the sockets are
the ones LMCache's worker opens:

  PUSH    -> controller PULL    KV batches, full-sync batches and end, DeRegisterMsg
  DEALER  -> controller ROUTER  [b"", request] -> [b"", reply], replies in order
  DEALER  -> heartbeat_url      HeartbeatMsg (only if RegisterRetMsg names one)
  REP     <- controller REQ     ClearWorkerMsg, HealthWorkerMsg, ... (a thread)

Encoding uses python3-msgpack (Debian), independent of kvring's own encoder.
"""

import threading
import uuid

import msgpack
import zmq


def tagged(tag, **fields):
    """A msgspec tagged struct: {"type": tag, field: value, ...} in field order."""
    d = {"type": tag}
    d.update(fields)
    return d


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class LMCacheWorker:
    def __init__(self, instance_id, worker_id, pull_url, reply_url, rep_port, peer_init_url=None,
                 ip="127.0.0.1", ctx=None, timeout_ms=5000):
        self.instance_id = instance_id
        self.worker_id = worker_id
        self.ip = ip
        self.port = rep_port
        self.peer_init_url = peer_init_url
        self.ctx = ctx or zmq.Context.instance()
        self.timeout_ms = timeout_ms
        self.push = self._socket(zmq.PUSH, "tcp://" + pull_url)
        self.dealer = self._socket(zmq.DEALER, "tcp://" + reply_url) if reply_url else None
        self.reply_url = reply_url
        self.heartbeat_dealer = None
        self.heartbeat_url = None
        self.seq = {}                 # per location, as BatchedMessageSender: from 0
        self.commands = []            # ControlMsgs received on the REP, decoded
        self.answers = {}             # tag -> reply dict the REP sends back
        self.keys = {}                # location -> set of held keys (for full sync)
        self._stop = threading.Event()
        self._rep_thread = None
        if rep_port:
            self.rep = self.ctx.socket(zmq.REP)
            self.rep.setsockopt(zmq.LINGER, 0)
            self.rep.bind("tcp://127.0.0.1:%d" % rep_port)
            self._rep_thread = threading.Thread(target=self._serve_commands, daemon=True)
            self._rep_thread.start()

    def _socket(self, kind, url):
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        s.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        s.connect(url)
        return s

    # ---- requests on the DEALER ------------------------------------------------
    def request(self, msg, dealer=None):
        d = dealer or self.dealer
        d.send_multipart([b"", pack(msg)])
        return unpack(d.recv_multipart()[-1])

    def request_raw(self, frames, dealer=None):
        d = dealer or self.dealer
        d.send_multipart(frames)
        return unpack(d.recv_multipart()[-1])

    def _identity(self):
        return dict(instance_id=self.instance_id, worker_id=self.worker_id, ip=self.ip, port=self.port,
                    peer_init_url=self.peer_init_url)

    def register(self):
        ret = self.request(tagged("RegisterMsg", **self._identity()))
        assert ret["type"] == "RegisterRetMsg", ret
        url = ret.get("extra_config", {}).get("heartbeat_url")
        if url:
            self.heartbeat_url = url
            if self.heartbeat_dealer is not None:
                self.heartbeat_dealer.close(0)
            self.heartbeat_dealer = self._socket(zmq.DEALER, "tcp://" + url)
        return ret

    def heartbeat(self, full_sync=True):
        """One heartbeat (on the heartbeat DEALER when there is one); runs a
        full sync when the reply asks for it, as LMCache's worker does."""
        ret = self.request(tagged("HeartbeatMsg", **self._identity()), self.heartbeat_dealer)
        assert ret["type"] == "HeartbeatRetMsg", ret
        asked = [c for c in ret.get("commands", []) if c.get("command_type") == "full_sync"]
        if asked and full_sync:
            for location in sorted(self.keys) or ["LocalCPUBackend"]:
                self.full_sync(location)
        return ret

    def lookup(self, hashes):
        ret = self.request(tagged("BatchedP2PLookupMsg", hashes=list(hashes), instance_id=self.instance_id,
                                  worker_id=self.worker_id))
        assert ret["type"] == "BatchedP2PLookupRetMsg", ret
        return tuple(ret["layout_info"][0])

    def lookups_in_flight(self, hash_lists):
        """Many lookups on one DEALER before any reply (LMCache's asyncio
        worker): replies must come back in the order of the requests."""
        for hashes in hash_lists:
            self.dealer.send_multipart([b"", pack(tagged("BatchedP2PLookupMsg", hashes=list(hashes),
                                                         instance_id=self.instance_id, worker_id=self.worker_id))])
        return [tuple(unpack(self.dealer.recv_multipart()[-1])["layout_info"][0]) for _ in hash_lists]

    # ---- events on the PUSH -------------------------------------------------------
    def _ops(self, location, op, keys):
        events = []
        for k in keys:
            s = self.seq.get(location, 0)
            self.seq[location] = s + 1
            events.append({"op_type": op, "key": k, "seq_num": s})
        return tagged("BatchedKVOperationMsg", instance_id=self.instance_id, worker_id=self.worker_id,
                      location=location, operations=events)

    def admit(self, location, keys, batch=50):
        keys = list(keys)
        self.keys.setdefault(location, set()).update(keys)
        # Up to 50 ops a batch and 50 messages a multipart, as LMCache's sender.
        msgs = [pack(self._ops(location, "admit", keys[i:i + batch])) for i in range(0, len(keys), batch)]
        for i in range(0, len(msgs), 50):
            self.push.send_multipart(msgs[i:i + 50])

    def evict(self, location, keys):
        keys = list(keys)
        self.keys.setdefault(location, set()).difference_update(keys)
        self.push.send(pack(self._ops(location, "evict", keys)))

    def deregister(self):
        self.push.send(pack(tagged("DeRegisterMsg", instance_id=self.instance_id, worker_id=self.worker_id,
                                   ip=self.ip, port=self.port)))

    def full_sync(self, location, batch_size=2000, poll_limit=200):
        keys = sorted(self.keys.get(location, set()))
        batches = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)] or [[]]
        sync_id = "%s_%s_%s" % (self.instance_id, self.worker_id, uuid.uuid4().hex[:8])
        ret = self.request(tagged("FullSyncStartMsg", instance_id=self.instance_id, worker_id=self.worker_id,
                                  location=location, sync_id=sync_id, total_keys=len(keys),
                                  batch_count=len(batches)))
        assert ret["type"] == "FullSyncStartRetMsg" and ret["accepted"], ret
        for i, b in enumerate(batches):
            self.push.send(pack(tagged("FullSyncBatchMsg", instance_id=self.instance_id, worker_id=self.worker_id,
                                       location=location, sync_id=sync_id, batch_id=i, keys=b)))
        self.push.send(pack(tagged("FullSyncEndMsg", instance_id=self.instance_id, worker_id=self.worker_id,
                                   location=location, sync_id=sync_id, actual_total_keys=len(keys))))
        for _ in range(poll_limit):
            st = self.request(tagged("FullSyncStatusMsg", instance_id=self.instance_id, worker_id=self.worker_id,
                                     sync_id=sync_id))
            assert st["type"] == "FullSyncStatusRetMsg", st
            if st["is_complete"]:
                return st
            for i in st.get("missing_batches", []):
                self.push.send(pack(tagged("FullSyncBatchMsg", instance_id=self.instance_id,
                                           worker_id=self.worker_id, location=location, sync_id=sync_id,
                                           batch_id=i, keys=batches[i])))
        raise AssertionError("full sync %s never completed" % sync_id)

    # ---- commands on the REP --------------------------------------------------------
    def _serve_commands(self):
        poller = zmq.Poller()
        poller.register(self.rep, zmq.POLLIN)
        while not self._stop.is_set():
            if not dict(poller.poll(50)):
                continue
            msg = unpack(self.rep.recv())
            self.commands.append(msg)
            tag = msg.get("type", "")
            if tag in self.answers:
                reply = self.answers[tag]
            elif tag == "HealthWorkerMsg":
                reply = tagged("HealthWorkerRetMsg", error_code=0)
            elif tag == "ClearWorkerMsg":
                n = sum(len(v) for v in self.keys.values())
                reply = tagged("ClearWorkerRetMsg", num_tokens=n * 256)
            else:
                reply = tagged("ErrorMsg", error="Unknown message: %s" % tag)
            if reply is not None:
                self.rep.send(pack(reply))

    def close(self):
        self._stop.set()
        if self._rep_thread:
            self._rep_thread.join()
            self.rep.close(0)
        for s in (self.push, self.dealer, self.heartbeat_dealer):
            if s is not None:
                s.close(0)
