// Codec throughput: kvring's hot-path views and generic decoder against
// msgpack-cxx (the Debian library) doing the same job, on msgspec's own bytes.
//
//   BM_DecodeKvBatch_View        zero-allocation view (the controller's path)
//   BM_DecodeKvBatch_Generic     full Message object (strings and vectors)
//   BM_DecodeKvBatch_MsgpackCxxUnpack   msgpack::unpack into an object tree, then read ops
//   BM_DecodeKvBatch_MsgpackCxxVisitor  msgpack::parse with a SAX visitor (no tree)
//   BM_DecodeP2PLookup_View / _Keys     a lookup into Ints / into 64-bit keys (the controller's path)
//   BM_EncodeP2PLookup_Request          a worker's lookup from its uint64 hashes (client.cc)
//
// Counters: items = KV ops (or hashes), bytes = msgpack bytes.
#include <benchmark/benchmark.h>

#include <fstream>
#include <iterator>
#include <random>
#include <msgpack.hpp>
#include <span>
#include <string>

#include "kvring/protocol/codec.h"

namespace {

using namespace kvring::protocol;

std::string Vector(const char* name) {
  std::ifstream f(std::string(KVRING_TEST_DATA) + "/lmcache-msgspec/" + name, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
std::span<const std::uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

void SetCounters(benchmark::State& state, std::size_t items, std::size_t bytes) {
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * items));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
  state.counters["msgs/s"] = benchmark::Counter(static_cast<double>(state.iterations()),
                                                benchmark::Counter::kIsRate);
}

const char* KvFile(std::int64_t ops) {
  return ops == 256 ? "BatchedKVOperationMsg__256ops.msgpack" : "BatchedKVOperationMsg__10000ops.msgpack";
}
const char* P2PFile(std::int64_t n) {
  return n == 32 ? "BatchedP2PLookupMsg__32.msgpack" : "BatchedP2PLookupMsg__4096.msgpack";
}

void BM_DecodeKvBatch_View(benchmark::State& state) {
  std::string bytes = Vector(KvFile(state.range(0)));
  BatchedKVOperationView view;
  std::uint64_t sink = 0;
  for (auto _ : state) {
    if (!Decode(Bytes(bytes), &view).ok()) state.SkipWithError("decode failed");
    sink += view.operations.back().key.bits();
  }
  benchmark::DoNotOptimize(sink);
  SetCounters(state, view.operations.size(), bytes.size());
}
BENCHMARK(BM_DecodeKvBatch_View)->Arg(256)->Arg(10000);

void BM_DecodeKvBatch_Generic(benchmark::State& state) {
  std::string bytes = Vector(KvFile(state.range(0)));
  std::size_t ops = 0;
  for (auto _ : state) {
    auto m = Decode(Bytes(bytes));
    if (!m.ok()) state.SkipWithError("decode failed");
    ops = std::get<BatchedKVOperationMsg>(*m).operations.size();
    benchmark::DoNotOptimize(m);
  }
  SetCounters(state, ops, bytes.size());
}
BENCHMARK(BM_DecodeKvBatch_Generic)->Arg(256);

void BM_DecodeKvBatch_MsgpackCxxUnpack(benchmark::State& state) {
  std::string bytes = Vector(KvFile(state.range(0)));
  std::uint64_t sink = 0;
  std::size_t ops = 0;
  for (auto _ : state) {
    msgpack::object_handle oh = msgpack::unpack(bytes.data(), bytes.size());
    const msgpack::object& o = oh.get();
    for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
      const auto& kv = o.via.map.ptr[i];
      if (kv.key.via.str.size != 10 || std::memcmp(kv.key.via.str.ptr, "operations", 10) != 0) continue;
      ops = kv.val.via.array.size;
      for (std::uint32_t k = 0; k < ops; ++k) {
        const auto& ev = kv.val.via.array.ptr[k].via.map;
        for (std::uint32_t f = 0; f < ev.size; ++f) sink += ev.ptr[f].val.via.u64;
      }
    }
  }
  benchmark::DoNotOptimize(sink);
  SetCounters(state, ops, bytes.size());
}
BENCHMARK(BM_DecodeKvBatch_MsgpackCxxUnpack)->Arg(256);

// A visitor that sums every integer: the least work any decoder of the batch
// must do, with msgpack-cxx's push parser.
struct SumVisitor : msgpack::null_visitor {
  std::uint64_t sum = 0;
  bool visit_positive_integer(std::uint64_t v) { sum += v; return true; }
  bool visit_negative_integer(std::int64_t v) { sum += static_cast<std::uint64_t>(v); return true; }
  void parse_error(std::size_t, std::size_t) {}
  void insufficient_bytes(std::size_t, std::size_t) {}
};
void BM_DecodeKvBatch_MsgpackCxxVisitor(benchmark::State& state) {
  std::string bytes = Vector(KvFile(state.range(0)));
  SumVisitor v;
  for (auto _ : state) {
    std::size_t off = 0;
    msgpack::parse(bytes.data(), bytes.size(), off, v);
  }
  benchmark::DoNotOptimize(v.sum);
  SetCounters(state, static_cast<std::size_t>(state.range(0)), bytes.size());
}
BENCHMARK(BM_DecodeKvBatch_MsgpackCxxVisitor)->Arg(256);

void BM_EncodeKvBatch_Span(benchmark::State& state) {
  std::string bytes = Vector(KvFile(state.range(0)));
  BatchedKVOperationView view;
  (void)Decode(Bytes(bytes), &view);
  // Room as a worker claims it in its ring (a bound, not the exact size).
  std::vector<std::uint8_t> out(KvBatchBytesBound(view.instance_id.size(), view.location.size(), view.operations.size()));
  for (auto _ : state) {
    EncodeResult r = EncodeTo(view, std::span(out));
    benchmark::DoNotOptimize(r);
  }
  SetCounters(state, view.operations.size(), bytes.size());
}
BENCHMARK(BM_EncodeKvBatch_Span)->Arg(256);

void BM_DecodeP2PLookup_View(benchmark::State& state) {
  std::string bytes = Vector(P2PFile(state.range(0)));
  BatchedP2PLookupView view;
  std::uint64_t sink = 0;
  for (auto _ : state) {
    if (!Decode(Bytes(bytes), &view).ok()) state.SkipWithError("decode failed");
    sink += view.hashes.back().bits();
  }
  benchmark::DoNotOptimize(sink);
  SetCounters(state, view.hashes.size(), bytes.size());
}
BENCHMARK(BM_DecodeP2PLookup_View)->Arg(32)->Arg(4096);

// The controller's decode: hashes straight to the index's 64-bit keys.
void BM_DecodeP2PLookup_Keys(benchmark::State& state) {
  std::string bytes = Vector(P2PFile(state.range(0)));
  BatchedP2PLookupKeys keys;
  std::uint64_t sink = 0;
  for (auto _ : state) {
    if (!Decode(Bytes(bytes), &keys).ok()) state.SkipWithError("decode failed");
    sink += keys.hashes.back();
  }
  benchmark::DoNotOptimize(sink);
  SetCounters(state, keys.hashes.size(), bytes.size());
}
BENCHMARK(BM_DecodeP2PLookup_Keys)->Arg(32)->Arg(4096);

// A worker's encode: its uint64 hashes, no Ints in between.
void BM_EncodeP2PLookup_Request(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  std::mt19937_64 rng(7);
  std::vector<std::uint64_t> hashes(n);
  for (auto& h : hashes) h = rng();
  std::vector<std::uint8_t> out(64 + 9 * n);
  for (auto _ : state) {
    EncodeResult r = EncodeTo(BatchedP2PLookupRequest{hashes, "instance-0", 0}, std::span(out));
    benchmark::DoNotOptimize(r);
  }
  SetCounters(state, n, 9 * n);
}
BENCHMARK(BM_EncodeP2PLookup_Request)->Arg(32)->Arg(4096);

void BM_EncodeP2PLookup_Span(benchmark::State& state) {
  std::string bytes = Vector(P2PFile(state.range(0)));
  BatchedP2PLookupView view;
  (void)Decode(Bytes(bytes), &view);
  std::vector<std::uint8_t> out(bytes.size());
  for (auto _ : state) {
    EncodeResult r = EncodeTo(view, std::span(out));
    benchmark::DoNotOptimize(r);
  }
  SetCounters(state, view.hashes.size(), bytes.size());
}
BENCHMARK(BM_EncodeP2PLookup_Span)->Arg(32)->Arg(4096);

// The same with fresh random 64-bit hashes of either sign (LMCache's chunk
// hashes are Python hashes: signed, effectively random), a new request each
// time as a worker would send: the branch predictor cannot learn their sizes.
void BM_EncodeP2PLookup_RandomHashes(benchmark::State& state) {
  BatchedP2PLookupView view;
  view.instance_id = "lmcache_instance_0";
  view.worker_id = 0;
  std::mt19937_64 rng(5);
  std::vector<std::vector<Int>> requests(64);
  for (auto& r : requests)
    for (std::int64_t i = 0; i < state.range(0); ++i) r.push_back(Int::FromI64(static_cast<std::int64_t>(rng())));
  std::vector<std::uint8_t> out(16 + 9 * static_cast<std::size_t>(state.range(0)) + 64);
  std::size_t k = 0, bytes = 0;
  for (auto _ : state) {
    view.hashes.swap(requests[k++ % requests.size()]);
    EncodeResult r = EncodeTo(view, std::span(out));
    bytes = r.bytes;
    benchmark::DoNotOptimize(r);
  }
  SetCounters(state, static_cast<std::size_t>(state.range(0)), bytes);
}
BENCHMARK(BM_EncodeP2PLookup_RandomHashes)->Arg(32)->Arg(4096);

void BM_EncodeP2PLookupReply_Span(benchmark::State& state) {
  BatchedP2PLookupRetMsg ret{{{"lmcache_instance_1", "LocalCPUBackend", Int(12), "localhost:8201"}}};
  std::uint8_t out[256];
  for (auto _ : state) {
    EncodeResult r = EncodeTo(ret, std::span(out));
    benchmark::DoNotOptimize(r);
  }
  SetCounters(state, 1, EncodeTo(ret, std::span(out)).bytes);
}
BENCHMARK(BM_EncodeP2PLookupReply_Span);

}  // namespace

BENCHMARK_MAIN();
