#include "kvring/protocol/codec.h"

#include <sys/resource.h>

#include <cstring>

#include <gtest/gtest.h>

#include <limits>

#include "../alloc_counter.h"
#include "../test_util.h"
#include "kvring/protocol/errors.h"
#include "kvring/protocol/json.h"

namespace kvring::protocol {
namespace {

using kvring::testing::AsBytes;
using kvring::testing::Hex;
using kvring::testing::Manifest;
using kvring::testing::ReadFile;
using kvring::testing::VectorDir;

std::string VectorBytes(const Json& c) { return ReadFile(VectorDir() + c["file"].get<std::string>()); }

bool IsCommandCase(const Json& c) { return c["decode_as"] == "AnyCommand"; }

// ---- the golden vectors ----------------------------------------------------------

TEST(GoldenVectors, EveryValidVectorDecodesToItsExpectedValue) {
  int checked = 0;
  for (const auto& c : Manifest()["cases"]) {
    if (!c["valid"].get<bool>()) continue;
    SCOPED_TRACE(c["file"].get<std::string>());
    std::string bytes = VectorBytes(c);
    Json got;
    if (IsCommandCase(c)) {
      auto r = DecodeCommand(AsBytes(bytes));
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      got = ToJson(*r);
    } else {
      auto r = Decode(AsBytes(bytes));
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      EXPECT_EQ(TagOf(*r), c["tag"].get<std::string>());
      got = ToJson(*r);
    }
    EXPECT_EQ(got, c["expected"]) << got.dump();
    ++checked;
  }
  EXPECT_EQ(checked, 140);
}

TEST(GoldenVectors, ReencodingGivesMsgspecBytes) {
  int canonical = 0;
  for (const auto& c : Manifest()["cases"]) {
    if (!c["valid"].get<bool>()) continue;
    SCOPED_TRACE(c["file"].get<std::string>());
    std::string bytes = VectorBytes(c);
    std::string out;
    if (IsCommandCase(c)) {
      auto r = DecodeCommand(AsBytes(bytes));
      ASSERT_TRUE(r.ok());
      EncodeCommand(*r, &out);
    } else {
      auto r = Decode(AsBytes(bytes));
      ASSERT_TRUE(r.ok());
      out = Encode(*r);
    }
    if (c["canonical"].get<bool>()) {
      EXPECT_EQ(out, bytes);
      ++canonical;
    } else {
      auto want = Hex(c["canonical_hex"].get<std::string>());
      EXPECT_EQ(out, std::string(want.begin(), want.end()));
    }
  }
  EXPECT_EQ(canonical, 119);
}

ProtocolError KindFor(const std::string& python_error) {
  if (python_error == "DecodeError") return ProtocolError::kDecode;
  if (python_error == "ValidationError") return ProtocolError::kValidation;
  if (python_error == "RecursionError") return ProtocolError::kRecursion;
  if (python_error == "UnicodeDecodeError") return ProtocolError::kUnicode;
  return ProtocolError::kNone;
}

// msgspec's "Expected `int`, got `str`" and kvring's "expected int, got str"
// say the same thing; compare them without the quoting.
std::string Normalize(std::string s) {
  std::string out;
  for (char ch : s)
    if (ch != '`' && ch != '\'') out.push_back(ch);
  if (!out.empty()) out[0] = static_cast<char>(std::tolower(out[0]));
  return out;
}

TEST(GoldenVectors, EveryInvalidVectorIsRejectedLikeMsgspec) {
  int checked = 0;
  for (const auto& c : Manifest()["cases"]) {
    if (c["valid"].get<bool>()) continue;
    SCOPED_TRACE(c["file"].get<std::string>());
    std::string bytes = VectorBytes(c);
    Status st = IsCommandCase(c) ? DecodeCommand(AsBytes(bytes)).status() : Decode(AsBytes(bytes)).status();
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(ProtocolErrorOf(st), KindFor(c["error_type"].get<std::string>())) << st.ToString();
    std::string want = c["error"].get<std::string>();
    // The location, where msgspec gives one, must be the same.
    auto at = want.find(" - at ");
    if (at != std::string::npos) {
      std::string suffix = want.substr(at);
      ASSERT_GE(st.message().size(), suffix.size()) << st.message();
      EXPECT_EQ(st.message().substr(st.message().size() - suffix.size()), suffix) << st.message();
    }
    // And so must the complaint, for type errors.
    if (want.rfind("Expected", 0) == 0 || want.rfind("Invalid enum", 0) == 0) {
      std::string ours = st.message();
      auto colon = ours.find("': ");
      if (ours.rfind("field '", 0) == 0 && colon != std::string::npos) ours = ours.substr(colon + 3);
      EXPECT_EQ(Normalize(ours.substr(0, ours.find(" - at "))),
                Normalize(want.substr(0, want.find(" - at "))));
    }
    if (want.find("trailing characters") != std::string::npos) {
      EXPECT_NE(st.message().find("trailing bytes at byte 84"), std::string::npos) << st.message();
    }
    if (want.find("truncated") != std::string::npos) {
      EXPECT_NE(st.message().find("truncated at byte"), std::string::npos) << st.message();
    }
    ++checked;
  }
  EXPECT_EQ(checked, 52);
}

// ---- hostile input beyond the vectors ------------------------------------------

std::string KVAdmitPrefixWithUnknownField() {
  // {"type": "KVAdmitMsg", "junk": <value follows>} with 2 entries declared.
  std::string s;
  s.push_back(static_cast<char>(0x82));
  s += "\xa4type\xaaKVAdmitMsg";
  s += "\xa4junk";
  return s;
}

TEST(HostileInput, MillionDeepNestingInAnIgnoredFieldFailsAsRecursion) {
  std::string s = KVAdmitPrefixWithUnknownField();
  s.append(1000000, static_cast<char>(0x91));  // fixarray of 1, a million deep
  s.push_back(static_cast<char>(0xc0));
  auto r = Decode(AsBytes(s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(ProtocolErrorOf(r.status()), ProtocolError::kRecursion) << r.status().ToString();
}

TEST(HostileInput, MillionDeepNestingAtTopLevelFailsOnTheTypeCheck) {
  std::string s(1000000, static_cast<char>(0x91));
  s.push_back(static_cast<char>(0xc0));
  auto r = Decode(AsBytes(s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "expected object, got array - at `$`");
}

TEST(HostileInput, NestingJustInsideTheLimitDecodes) {
  std::string s = KVAdmitPrefixWithUnknownField();
  s[0] = static_cast<char>(0x86);
  s.append(900, static_cast<char>(0x91));
  s.push_back(static_cast<char>(0xc0));
  s += "\xabinstance_id\xa1i\xa9worker_id\x01\xa3key\x02\xa8location\xa1L";
  auto r = Decode(AsBytes(s));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(std::get<KVAdmitMsg>(*r).key, Int(2));
}

long MaxRssKb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

TEST(HostileInput, HugeDeclaredCountsAreTruncationWithoutAllocating) {
  const std::string array32 = "\xdd\xff\xff\xff\xff";
  const std::string map32 = "\xdf\xff\xff\xff\xff";
  // One-time static set-up (the tag table) is not what this test measures.
  ASSERT_TRUE(Decode(AsBytes(ReadFile(VectorDir() + "KVAdmitMsg__edge.msgpack"))).ok());
  long before = MaxRssKb();
  for (const auto& header : {array32, map32}) {
    // As the value of a known list field, of an ignored field, and of Any.
    std::string lookup = std::string("\x83\xa4type\xa9LookupMsg\xa8") + "event_id" + "\xa0" +
                         "\xa6tokens" + header;
    std::string ignored = KVAdmitPrefixWithUnknownField() + header;
    std::vector<std::string> inputs = {ignored};
    if (header == array32) inputs.push_back(lookup);  // a list field
    for (const auto& s : inputs) {
      long allocations;
      Result<Message> r = Status();
      {
        kvring::testing::AllocationCounter counter;
        r = Decode(AsBytes(s));
        allocations = counter.count();
      }
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(ProtocolErrorOf(r.status()), ProtocolError::kDecode) << r.status().ToString();
      // Only the error text may allocate, not 2^32 elements.
      EXPECT_LT(allocations, 10);
    }
  }
  EXPECT_LT(MaxRssKb() - before, 4 * 1024);  // flat: well under 4 MiB of growth
}

TEST(HostileInput, Str32LengthBeyondTheBufferIsTruncation) {
  std::string s = "\x81\xa4type\xdb\x00\x01\x00\x00" + std::string("abc");
  auto r = Decode(AsBytes(s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(ProtocolErrorOf(r.status()), ProtocolError::kDecode);
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos);
}

TEST(HostileInput, BaseClassTagsAreUnknown) {
  for (const char* tag : {"MsgBase", "WorkerMsg", "WorkerReqMsg", "ControlMsg", "OrchMsg",
                          "KVOperationMsg", "HeartbeatCommand", "full_sync"}) {
    std::string s = "\x81\xa4type";
    s.push_back(static_cast<char>(0xa0 | std::strlen(tag)));
    s += tag;
    auto r = Decode(AsBytes(s));
    ASSERT_FALSE(r.ok()) << tag;
    EXPECT_EQ(r.status().message(), "unknown tag '" + std::string(tag) + "' - at `$.type`");
  }
}

TEST(HostileInput, EveryTruncationOfEveryValidVectorFailsCleanly) {
  for (const auto& c : Manifest()["cases"]) {
    if (!c["valid"].get<bool>() || IsCommandCase(c)) continue;
    std::string bytes = VectorBytes(c);
    if (bytes.size() > 4096) continue;
    for (std::size_t n = 0; n < bytes.size(); ++n) {
      auto r = Decode(AsBytes(bytes.substr(0, n)));
      ASSERT_FALSE(r.ok()) << c["file"] << " cut at " << n;
      EXPECT_EQ(ProtocolErrorOf(r.status()), ProtocolError::kDecode) << r.status().ToString();
    }
  }
}

TEST(HostileInput, InvalidUtf8FormsAreRejected) {
  for (std::string bad : {std::string("\xc0\x80"), std::string("\xed\xa0\x80"),  // overlong, surrogate
                          std::string("\xf4\x90\x80\x80"), std::string("\xe2\x82")}) {
    std::string s = "\x82\xa4type\xafHealthWorkerMsg\xafworker_event_id";
    s.push_back(static_cast<char>(0xa0 | bad.size()));
    s += bad;
    auto r = Decode(AsBytes(s));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(ProtocolErrorOf(r.status()), ProtocolError::kUnicode);
  }
}

TEST(Limits, MessageSizeLimitIsEnforced) {
  std::string bytes = ReadFile(VectorDir() + "BatchedKVOperationMsg__256ops.msgpack");
  DecodeLimits lim;
  lim.max_message_bytes = bytes.size() - 1;
  auto r = Decode(AsBytes(bytes), lim);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(ProtocolErrorOf(r.status()), ProtocolError::kLimit);
  lim.max_message_bytes = bytes.size();
  EXPECT_TRUE(Decode(AsBytes(bytes), lim).ok());
}

TEST(Limits, ContainerAndStringLimitsAreEnforced) {
  std::string bytes = ReadFile(VectorDir() + "BatchedKVOperationMsg__256ops.msgpack");
  DecodeLimits lim;
  lim.max_container_len = 255;
  EXPECT_EQ(ProtocolErrorOf(Decode(AsBytes(bytes), lim).status()), ProtocolError::kLimit);
  lim.max_container_len = 256;
  EXPECT_TRUE(Decode(AsBytes(bytes), lim).ok());
  lim.max_str_len = 4;  // "lmcache_instance_1" is longer
  EXPECT_EQ(ProtocolErrorOf(Decode(AsBytes(bytes), lim).status()), ProtocolError::kLimit);
}

TEST(Limits, DepthLimitIsConfigurable) {
  std::string s = KVAdmitPrefixWithUnknownField();
  s[0] = static_cast<char>(0x86);
  s.append(20, static_cast<char>(0x91));
  s.push_back(static_cast<char>(0xc0));
  s += "\xabinstance_id\xa1i\xa9worker_id\x01\xa3key\x02\xa8location\xa1L";
  DecodeLimits lim;
  lim.max_depth = 21;  // top map + 20 arrays
  EXPECT_TRUE(Decode(AsBytes(s), lim).ok());
  lim.max_depth = 20;
  EXPECT_EQ(ProtocolErrorOf(Decode(AsBytes(s), lim).status()), ProtocolError::kRecursion);
}

// ---- integers ----------------------------------------------------------------------

TEST(Integers, FullRangeSurvivesARoundTrip) {
  const Int values[] = {Int(0), Int(1), Int(127), Int(128), Int(255), Int(256), Int(65535),
                        Int(65536), Int::FromU64(0xffffffffULL), Int::FromU64(0x100000000ULL),
                        Int::FromU64(0x7fffffffffffffffULL), Int::FromU64(0x8000000000000000ULL),
                        Int::FromU64(~0ULL), Int(-1), Int(-32), Int(-33), Int(-128), Int(-129),
                        Int(-32768), Int(-32769), Int::FromI64(INT32_MIN),
                        Int::FromI64(std::int64_t{INT32_MIN} - 1), Int::FromI64(INT64_MIN)};
  for (Int v : values) {
    KVAdmitMsg m{"i", v, v, "L", v};
    std::string bytes = Encode(m);
    auto r = Decode(AsBytes(bytes));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(std::get<KVAdmitMsg>(*r), m) << v.ToString();
  }
  EXPECT_NE(Int(-1), Int::FromU64(~0ULL));  // different Python ints, same bits
  EXPECT_EQ(Int(-1).bits(), Int::FromU64(~0ULL).bits());
}

TEST(Integers, ShortestFormsMatchMsgspec) {
  auto enc = [](Int v) {
    std::string s = Encode(ClearWorkerRetMsg{v});
    return s.substr(35);  // after 0x82, "type", "ClearWorkerRetMsg", "num_tokens"
  };
  EXPECT_EQ(enc(Int(127)), "\x7f");
  EXPECT_EQ(enc(Int(128)), "\xcc\x80");
  EXPECT_EQ(enc(Int(-32)), "\xe0");
  EXPECT_EQ(enc(Int(-33)), std::string("\xd0\xdf"));
  EXPECT_EQ(enc(Int::FromU64(0x7fffffffffffffffULL)), "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff");
}

// ---- hot path ----------------------------------------------------------------------

TEST(HotPath, KvBatchViewMatchesTheGenericDecoder) {
  for (const char* file : {"BatchedKVOperationMsg__256ops.msgpack", "BatchedKVOperationMsg__10000ops.msgpack",
                           "BatchedKVOperationMsg__wide_containers.msgpack",
                           "BatchedKVOperationMsg__edge_ints.msgpack"}) {
    std::string bytes = ReadFile(VectorDir() + file);
    auto generic = Decode(AsBytes(bytes));
    ASSERT_TRUE(generic.ok());
    const auto& g = std::get<BatchedKVOperationMsg>(*generic);
    BatchedKVOperationView v;
    ASSERT_TRUE(Decode(AsBytes(bytes), &v).ok());
    EXPECT_EQ(v.instance_id, g.instance_id);
    EXPECT_EQ(v.worker_id, g.worker_id);
    EXPECT_EQ(v.location, g.location);
    EXPECT_EQ(v.operations, g.operations);
  }
}

TEST(HotPath, WarmedViewsDecodeWithoutHeapAllocation) {
  std::string kv = ReadFile(VectorDir() + "BatchedKVOperationMsg__256ops.msgpack");
  std::string p2p = ReadFile(VectorDir() + "BatchedP2PLookupMsg__4096.msgpack");
  BatchedKVOperationView kv_view;
  BatchedP2PLookupView p2p_view;
  ASSERT_TRUE(Decode(AsBytes(kv), &kv_view).ok());  // warm-up sizes the vectors
  ASSERT_TRUE(Decode(AsBytes(p2p), &p2p_view).ok());
  bool all_ok = true;
  long allocations;
  {
    kvring::testing::AllocationCounter counter;
    for (int i = 0; i < 100; ++i) {
      all_ok &= Decode(AsBytes(kv), &kv_view).ok();
      all_ok &= Decode(AsBytes(p2p), &p2p_view).ok();
    }
    allocations = counter.count();
  }
  EXPECT_TRUE(all_ok);
  EXPECT_EQ(allocations, 0);
  EXPECT_EQ(kv_view.operations.size(), 256u);
  EXPECT_EQ(p2p_view.hashes.size(), 4096u);
}

// Calls check(bytes, DecodeLimits{}) on every vector, valid or not, whose
// tag is `tag`; returns how many there were.
template <typename Check>
int OnEveryVectorTagged(std::string_view tag, Check check) {
  int n = 0;
  for (const auto& c : Manifest()["cases"]) {
    const std::string bytes = VectorBytes(c);
    auto found = PeekTag(AsBytes(bytes));
    if (!found.ok() || *found != tag) continue;
    SCOPED_TRACE(c["file"].get<std::string>());
    check(bytes, DecodeLimits{});
    ++n;
  }
  return n;
}

// Calls check(bytes, limits) on every truncation of `whole`, every change of
// one of its bytes to one of `values`, `whole` with a trailing byte, and
// `whole` under each of `tight`: the inputs near a valid message where two
// decoders of it could part ways.
template <typename Check>
void AroundAMessage(const std::string& whole, std::initializer_list<unsigned char> values,
                    std::initializer_list<DecodeLimits> tight, Check check) {
  for (std::size_t n = 0; n < whole.size(); ++n) {
    SCOPED_TRACE(n);
    check(whole.substr(0, n), DecodeLimits{});
  }
  for (std::size_t at = 0; at < whole.size(); ++at) {
    for (unsigned char to : values) {
      std::string changed = whole;
      changed[at] = static_cast<char>(to);
      SCOPED_TRACE(::testing::Message() << "byte " << at << " = " << unsigned{to});
      check(changed, DecodeLimits{});
    }
  }
  check(whole + std::string(1, '\0'), DecodeLimits{});
  for (const DecodeLimits& limits : tight) check(whole, limits);
}

// The controller decodes lookups into BatchedP2PLookupKeys (hashes as their
// 64-bit patterns, no Ints; msgspec's exact layout read without key
// matching): every lookup among the vectors, valid or not, every truncation
// of one, every single-byte change of one and tight limits all decode there
// exactly as into the view: the same success or the same error, the same keys.
TEST(HotPath, TheControllersKeyViewDecodesLookupsAsTheViewDoes) {
  auto same = [](const std::string& bytes, const DecodeLimits& limits) {
    BatchedP2PLookupView view;
    BatchedP2PLookupKeys keys;
    const Status a = Decode(AsBytes(bytes), &view, limits), b = Decode(AsBytes(bytes), &keys, limits);
    ASSERT_EQ(a.ok(), b.ok()) << a.ToString() << " / " << b.ToString();
    if (!a.ok()) {
      EXPECT_EQ(a.ToString(), b.ToString());
      return;
    }
    ASSERT_EQ(view.hashes.size(), keys.hashes.size());
    for (std::size_t i = 0; i < keys.hashes.size(); ++i) ASSERT_EQ(view.hashes[i].bits(), keys.hashes[i]) << i;
    EXPECT_EQ(view.instance_id, keys.instance_id);
    EXPECT_EQ(view.worker_id, keys.worker_id);
  };
  EXPECT_GE(OnEveryVectorTagged(BatchedP2PLookupKeys::kTag, same), 3);
  const std::string whole = ReadFile(VectorDir() + "BatchedP2PLookupMsg__32.msgpack");
  AroundAMessage(whole, {0x00, 0x7f, 0x80, 0xa0, 0xc1, 0xcf, 0xd3, 0xd9, 0xdc, 0xff},
                 {DecodeLimits{.max_message_bytes = whole.size() - 1}, DecodeLimits{.max_depth = 1},
                  DecodeLimits{.max_container_len = 31}, DecodeLimits{.max_str_len = 3}},
                 same);
  BatchedP2PLookupKeys keys;
  ASSERT_TRUE(Decode(AsBytes(whole), &keys).ok());
  EXPECT_EQ(keys.hashes.size(), 32u);
}

TEST(HotPath, ViewRejectsAnotherTag) {
  std::string bytes = ReadFile(VectorDir() + "KVAdmitMsg__edge.msgpack");
  BatchedKVOperationView v;
  Status st = Decode(AsBytes(bytes), &v);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message(), "expected a BatchedKVOperationMsg, got tag 'KVAdmitMsg'");
}

TEST(HotPath, EncodeIntoSpanReportsDoesNotFitWithTheNeededSize) {
  std::string bytes = ReadFile(VectorDir() + "BatchedP2PLookupMsg__32.msgpack");
  BatchedP2PLookupView v;
  ASSERT_TRUE(Decode(AsBytes(bytes), &v).ok());
  std::vector<std::uint8_t> buf(bytes.size());
  EncodeResult small = EncodeTo(v, std::span(buf.data(), bytes.size() - 1));
  EXPECT_FALSE(small.fits);
  EXPECT_EQ(small.bytes, bytes.size());
  EncodeResult exact = EncodeTo(v, std::span(buf));
  EXPECT_TRUE(exact.fits);
  EXPECT_EQ(std::string(buf.begin(), buf.end()), bytes);

  BatchedP2PLookupRetMsg ret{{{"inst", "LocalCPUBackend", Int(12), "host:1"}}};
  std::vector<std::uint8_t> out(256);
  EncodeResult rr;
  long allocations;
  {
    kvring::testing::AllocationCounter counter;
    for (int i = 0; i < 100; ++i) (void)EncodeTo(v, std::span(buf));
    rr = EncodeTo(ret, std::span(out));
    allocations = counter.count();
  }
  EXPECT_EQ(allocations, 0);
  ASSERT_TRUE(rr.fits);
  EXPECT_EQ(std::string(out.begin(), out.begin() + rr.bytes), Encode(ret));
}

// Hash arrays are written in bulk (room for 9 bytes an int checked once);
// where that room is not there but the shortest forms fit, they are still
// written, one by one, byte for byte the same.
TEST(HotPath, IntArraysOfEveryWidthEncodeTheSameWhateverTheRoom) {
  BatchedP2PLookupView v;
  for (long long x : std::initializer_list<long long>{0LL, 1LL, 127LL, 128LL, 255LL, 256LL, 65535LL, 65536LL, 4294967295LL, 4294967296LL,
                         -1LL, -32LL, -33LL, -128LL, -129LL, -32768LL, -32769LL, -2147483648LL, -2147483649LL,
                         std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()})
    v.hashes.push_back(Int(x));
  v.hashes.push_back(Int::FromU64(~0ULL));
  v.instance_id = "inst";
  v.worker_id = Int(3);
  std::vector<std::uint8_t> roomy(1024);
  EncodeResult r = EncodeTo(v, std::span(roomy));
  ASSERT_TRUE(r.fits);
  std::vector<std::uint8_t> exact(r.bytes);  // less than 9 bytes an int: the bulk path cannot take it
  EncodeResult e = EncodeTo(v, std::span(exact));
  ASSERT_TRUE(e.fits);
  ASSERT_EQ(e.bytes, r.bytes);
  EXPECT_TRUE(std::equal(exact.begin(), exact.end(), roomy.begin()));
  BatchedP2PLookupView back;
  ASSERT_TRUE(Decode(std::span<const std::uint8_t>(exact), &back).ok());
  EXPECT_EQ(back.hashes, v.hashes);
  EXPECT_EQ(back.worker_id, v.worker_id);
  EXPECT_FALSE(EncodeTo(v, std::span(exact.data(), exact.size() - 1)).fits);
}

// A worker's lookup encodes its uint64 hashes without copying them into Ints
// first (BatchedP2PLookupRequest): the bytes are those of a view holding the
// same values as unsigned ints, in bulk or one by one, and real msgspec's for
// a message it encoded.
TEST(HotPath, LookupRequestsFromUint64HashesEncodeAsTheViewDoes) {
  std::vector<std::uint64_t> hashes{0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295ULL, 4294967296ULL,
                                    0x7fffffffffffffffULL, 0x8000000000000000ULL, ~0ULL, 0x0123456789abcdefULL};
  BatchedP2PLookupView v;
  for (std::uint64_t h : hashes) v.hashes.push_back(Int::FromU64(h));
  v.instance_id = "inst";
  v.worker_id = Int(3);
  const BatchedP2PLookupRequest req{hashes, v.instance_id, v.worker_id};
  std::vector<std::uint8_t> want(1024), roomy(1024);
  const EncodeResult w = EncodeTo(v, std::span(want));
  const EncodeResult r = EncodeTo(req, std::span(roomy));
  ASSERT_TRUE(w.fits);
  ASSERT_TRUE(r.fits);
  ASSERT_EQ(r.bytes, w.bytes);
  EXPECT_TRUE(std::equal(want.begin(), want.begin() + w.bytes, roomy.begin()));
  std::vector<std::uint8_t> exact(r.bytes);  // less than 9 bytes a hash: one by one
  const EncodeResult e = EncodeTo(req, std::span(exact));
  ASSERT_TRUE(e.fits);
  EXPECT_TRUE(std::equal(exact.begin(), exact.end(), want.begin()));
  EXPECT_FALSE(EncodeTo(req, std::span(exact.data(), exact.size() - 1)).fits);

  // msgspec's own 32-hash message (signed hashes, as Python's hash() makes
  // them), re-encoded from their bit patterns: the same keys for the index.
  const std::string bytes = ReadFile(VectorDir() + "BatchedP2PLookupMsg__32.msgpack");
  BatchedP2PLookupView decoded;
  ASSERT_TRUE(Decode(AsBytes(bytes), &decoded).ok());
  std::vector<std::uint64_t> bits;
  for (const Int& h : decoded.hashes) bits.push_back(h.bits());
  std::vector<std::uint8_t> again(bytes.size() + 64);
  const EncodeResult a = EncodeTo(BatchedP2PLookupRequest{bits, decoded.instance_id, decoded.worker_id}, std::span(again));
  ASSERT_TRUE(a.fits);
  BatchedP2PLookupView back;
  ASSERT_TRUE(Decode(std::span<const std::uint8_t>(again.data(), a.bytes), &back).ok());
  ASSERT_EQ(back.hashes.size(), decoded.hashes.size());
  for (std::size_t i = 0; i < bits.size(); ++i) EXPECT_EQ(back.hashes[i].bits(), bits[i]) << i;
  EXPECT_EQ(back.instance_id, decoded.instance_id);
}

// KV events are written in bulk too (each map's constant bytes copied whole,
// room for the batch's worst case checked once); into a span with less room
// than that they go field by field. Both give real msgspec's bytes.
// The controller encodes a lookup's reply from views of its registry's
// strings (BatchedP2PLookupRetView): the bytes must be msgspec's, as the
// golden vectors have them, and as the owning message encodes them.
TEST(HotPath, LookupRepliesFromViewsEncodeAsMsgspecDoes) {
  for (const char* file : {"BatchedP2PLookupRetMsg__hit.msgpack", "BatchedP2PLookupRetMsg__miss.msgpack",
                           "BatchedP2PLookupRetMsg__multi.msgpack"}) {
    SCOPED_TRACE(file);
    const std::string bytes = ReadFile(VectorDir() + file);
    auto m = Decode(AsBytes(bytes));
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    const auto& ret = std::get<BatchedP2PLookupRetMsg>(*m);
    std::vector<P2PLayoutView> views;
    for (const P2PLayout& l : ret.layout_info)
      views.push_back({l.instance_id, l.location, l.num_hit_chunks, l.peer_init_url});
    std::vector<std::uint8_t> out(bytes.size());
    const EncodeResult r = EncodeTo(BatchedP2PLookupRetView{views}, std::span(out));
    ASSERT_TRUE(r.fits);
    EXPECT_EQ(std::string(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(r.bytes)), bytes);
    // One byte short: reported, with the size it needs.
    std::vector<std::uint8_t> small(bytes.size() - 1);
    const EncodeResult t = EncodeTo(BatchedP2PLookupRetView{views}, std::span(small));
    EXPECT_FALSE(t.fits);
    EXPECT_EQ(t.bytes, bytes.size());
  }
  // Large counts and long strings: the same bytes as the owning message.
  const std::string url(300, 'u');
  const P2PLayoutView v{"inst", "LocalCPUBackend", Int::FromU64(~0ULL), url};
  std::vector<std::uint8_t> out(1024);
  const EncodeResult r = EncodeTo(BatchedP2PLookupRetView{{&v, 1}}, std::span(out));
  ASSERT_TRUE(r.fits);
  EXPECT_EQ(std::string(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(r.bytes)),
            Encode(BatchedP2PLookupRetMsg{{P2PLayout{"inst", "LocalCPUBackend", Int::FromU64(~0ULL), url}}}));
}

TEST(HotPath, KvBatchesEncodeAsMsgspecDoesWhateverTheRoom) {
  for (const char* file : {"BatchedKVOperationMsg__edge_ints.msgpack", "BatchedKVOperationMsg__256ops.msgpack",
                           "BatchedKVOperationMsg__small.msgpack"}) {
    SCOPED_TRACE(file);
    const std::string bytes = ReadFile(VectorDir() + file);
    BatchedKVOperationView v;
    ASSERT_TRUE(Decode(AsBytes(bytes), &v).ok());
    ASSERT_FALSE(v.operations.empty());
    std::vector<std::uint8_t> roomy(bytes.size() + 64 * v.operations.size());  // the bulk path's room
    EncodeResult r = EncodeTo(v, std::span(roomy));
    ASSERT_TRUE(r.fits);
    EXPECT_EQ(std::string(roomy.begin(), roomy.begin() + r.bytes), bytes);
    std::vector<std::uint8_t> exact(bytes.size());  // less than the worst case: field by field
    EncodeResult e = EncodeTo(v, std::span(exact));
    ASSERT_TRUE(e.fits);
    EXPECT_EQ(std::string(exact.begin(), exact.end()), bytes);
    EncodeResult short_by_one = EncodeTo(v, std::span(exact.data(), exact.size() - 1));
    EXPECT_FALSE(short_by_one.fits);
    EXPECT_EQ(short_by_one.bytes, bytes.size());
  }
}

// The bound a worker claims ring room by holds the widest batch there is:
// names long enough for 5-byte string headers, enough ops for a 5-byte
// array header, every int 9 bytes.
TEST(HotPath, KvBatchBytesBoundHoldsTheWidestBatch) {
  BatchedKVOperationView v;
  const std::string instance(70000, 'i'), location(70000, 'l');
  v.instance_id = instance;
  v.location = location;
  v.worker_id = Int::FromU64(~0ULL);
  for (int i = 0; i < 70000; ++i)
    v.operations.push_back({OpType::kEvict, Int::FromU64(~0ULL - static_cast<std::uint64_t>(i)), Int(std::numeric_limits<std::int64_t>::min())});
  const std::size_t bound = KvBatchBytesBound(instance.size(), location.size(), v.operations.size());
  std::vector<std::uint8_t> room(bound);
  EncodeResult r = EncodeTo(v, std::span(room));
  ASSERT_TRUE(r.fits);
  EXPECT_EQ(r.bytes, bound);  // and tight
  BatchedKVOperationView back;
  ASSERT_TRUE(Decode(std::span<const std::uint8_t>(room.data(), r.bytes), &back).ok());
  EXPECT_EQ(back.operations, v.operations);
}

TEST(HotPath, LookupRepliesDecodeIntoAKeptMessageWithoutAllocating) {
  BatchedP2PLookupRetMsg first{{{"lmcache_instance_with_a_long_name_1", "LocalDiskBackend", Int(12),
                                 "a-peer-host.example.internal:8200"}}};
  BatchedP2PLookupRetMsg second{{{"lmcache_instance_with_a_long_name_2", "LocalCPUBackend", Int(3),  // no longer than the first
                                  "other-peer.example.internal:8201"}}};
  const std::string a = Encode(first), b = Encode(second);
  BatchedP2PLookupRetMsg kept;
  ASSERT_TRUE(Decode(AsBytes(a), &kept).ok());
  EXPECT_EQ(kept, first);
  long allocations;
  Status st;
  {
    kvring::testing::AllocationCounter counter;
    st = Decode(AsBytes(b), &kept);
    allocations = counter.count();
  }
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(kept, second);
  EXPECT_EQ(allocations, 0);
  // Fewer layouts than before: the extra ones go.
  ASSERT_TRUE(Decode(AsBytes(Encode(BatchedP2PLookupRetMsg{})), &kept).ok());
  EXPECT_TRUE(kept.layout_info.empty());
  // Another message (the controller's ErrorMsg) is refused, for the general decoder to read.
  EXPECT_FALSE(Decode(AsBytes(Encode(ErrorMsg{"no such thing"})), &kept).ok());
}

// A worker decodes its lookup's reply through an exact-layout fast path
// first: every reply among the vectors, every truncation and single-byte
// change of one, and tight limits give what the general decoder gives.
TEST(HotPath, LookupRepliesDecodeAsTheGeneralDecoderDoes) {
  auto same = [](const std::string& bytes, const DecodeLimits& limits) {
    BatchedP2PLookupRetMsg kept;
    const Status fast = Decode(AsBytes(bytes), &kept, limits);
    auto general = Decode(AsBytes(bytes), limits);
    if (general.ok() && !std::holds_alternative<BatchedP2PLookupRetMsg>(*general)) {
      EXPECT_FALSE(fast.ok());  // another message: refused, for the general decoder to read
      return;
    }
    ASSERT_EQ(fast.ok(), general.ok()) << fast.ToString() << " / " << general.status().ToString();
    if (general.ok()) {
      EXPECT_EQ(kept, std::get<BatchedP2PLookupRetMsg>(*general));
    } else if (PeekTag(AsBytes(bytes), limits).ok() && *PeekTag(AsBytes(bytes), limits) == BatchedP2PLookupRetMsg::kTag) {
      EXPECT_EQ(fast.ToString(), general.status().ToString());
    }
  };
  EXPECT_GE(OnEveryVectorTagged(BatchedP2PLookupRetMsg::kTag, same), 3);
  const std::string whole = ReadFile(VectorDir() + "BatchedP2PLookupRetMsg__hit.msgpack");
  AroundAMessage(whole, {0x00, 0x7f, 0x80, 0x90, 0x92, 0xa0, 0xc1, 0xd9, 0xdc, 0xff},
                 {DecodeLimits{.max_message_bytes = whole.size() - 1}, DecodeLimits{.max_depth = 2},
                  DecodeLimits{.max_container_len = 3}, DecodeLimits{.max_str_len = 4}},
                 same);
}

// The controller decodes a request with the tag it peeked once: the same
// message (or the same error) as the generic decoder, for every vector; a
// tag that is not the bytes' own is an error, never a message of the wrong type.
TEST(HotPath, DecodeTaggedAgreesWithDecodeOnEveryVector) {
  int checked = 0;
  for (const auto& c : Manifest()["cases"]) {
    if (c["decode_as"].get<std::string>() != "Msg") continue;
    SCOPED_TRACE(c["file"].get<std::string>());
    const std::string bytes = VectorBytes(c);
    auto tag = PeekTag(AsBytes(bytes));
    if (!tag.ok()) continue;  // no tag to peek: Decode's own error
    auto a = Decode(AsBytes(bytes));
    auto b = DecodeTagged(*tag, AsBytes(bytes));
    ASSERT_EQ(a.ok(), b.ok()) << (a.ok() ? b.status().ToString() : a.status().ToString());
    if (a.ok()) EXPECT_EQ(Encode(*a), Encode(*b));
    else EXPECT_EQ(ProtocolErrorOf(a.status()), ProtocolErrorOf(b.status()));
    ++checked;
  }
  EXPECT_GT(checked, 150);
  const std::string health = ReadFile(VectorDir() + "HealthMsg__typical.msgpack");
  auto wrong = DecodeTagged("ClearMsg", AsBytes(health));
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(ProtocolErrorOf(wrong.status()), ProtocolError::kValidation);
  EXPECT_FALSE(DecodeTagged("NoSuchMsg", AsBytes(health)).ok());
}

TEST(HotPath, PeekTagFindsTheTagAnywhere) {
  std::string bytes = ReadFile(VectorDir() + "KVAdmitMsg__type_last.msgpack");
  auto t = PeekTag(AsBytes(bytes));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, "KVAdmitMsg");
}

}  // namespace
}  // namespace kvring::protocol
