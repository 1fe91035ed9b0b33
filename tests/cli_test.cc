// The `kvring` tool, run as a real process.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <optional>

#include <gtest/gtest.h>

#include "kvring/protocol/codec.h"
#include "kvring/shm/ring.h"
#include "kvring/shm/segment.h"
#include "kvring/shm/framing.h"
#include "process_util.h"
#include "test_util.h"

namespace kvring {
namespace {

using protocol::Json;
using testing::Manifest;
using testing::ReadFile;
using testing::RunProcess;
using testing::VectorDir;

const std::string kCli = KVRING_CLI_PATH;

// Each vector decoded the way the manifest says msgspec decodes it: as Msg by
// default, heartbeat commands with --as command.
TEST(KvringDecode, PrintsEveryValidVectorAsItsExpectedJson) {
  for (const char* as : {"Msg", "AnyCommand"}) {
    std::vector<std::string> argv = {kCli, "decode", "--as", as == std::string("Msg") ? "msg" : "command"};
    std::vector<const Json*> cases;
    for (const auto& c : Manifest()["cases"]) {
      if (!c["valid"].get<bool>() || c["decode_as"] != as) continue;
      argv.push_back(VectorDir() + c["file"].get<std::string>());
      cases.push_back(&c);
    }
    ASSERT_FALSE(cases.empty()) << as;
    auto r = RunProcess(argv);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::size_t pos = 0;
    for (const Json* c : cases) {
      std::size_t nl = r.out.find('\n', pos);
      ASSERT_NE(nl, std::string::npos);
      auto line = protocol::ParseJson(r.out.substr(pos, nl - pos));
      ASSERT_TRUE(line.ok());
      EXPECT_EQ(*line, (*c)["expected"]) << (*c)["file"];
      pos = nl + 1;
    }
    EXPECT_EQ(pos, r.out.size());
  }
}

// msgspec's Decoder(Msg) refuses a map tagged "command_type"; so does the
// default decode, and a Msg is refused as a command.
TEST(KvringDecode, DecodesAsMsgUnlessToldCommand) {
  const std::string cmd = VectorDir() + "FullSyncCommand__default.msgpack";
  const std::string msg = VectorDir() + "ErrorMsg__typical.msgpack";
  auto as_msg = RunProcess({kCli, "decode", cmd});
  EXPECT_EQ(as_msg.exit_code, 1);
  EXPECT_NE(as_msg.err.find("missing required field 'type'"), std::string::npos) << as_msg.err;
  auto as_cmd = RunProcess({kCli, "decode", "--as", "command", cmd});
  EXPECT_EQ(as_cmd.exit_code, 0) << as_cmd.err;
  EXPECT_EQ(as_cmd.out, "{\"command_type\":\"full_sync\",\"reason\":null,\"args\":null}\n");
  EXPECT_EQ(RunProcess({kCli, "decode", "--as", "command", msg}).exit_code, 1);
  EXPECT_EQ(RunProcess({kCli, "decode", "--as", "nonsense", msg}).exit_code, 2);
}

TEST(KvringDecode, ReportsBadFilesAndGoesOn) {
  std::string good = VectorDir() + "ErrorMsg__typical.msgpack";
  std::string bad = VectorDir() + "trailing_byte.msgpack";
  auto r = RunProcess({kCli, "decode", bad, good, "/nonexistent/file"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("error: " + bad + ": decode error: trailing bytes at byte 84"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("error: /nonexistent/file: cannot open"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("\"type\":\"ErrorMsg\""), std::string::npos);
}

TEST(KvringDecode, ReadsStdinAndHonoursLimits) {
  std::string bytes = ReadFile(VectorDir() + "BatchedP2PLookupMsg__4096.msgpack");
  auto ok = RunProcess({kCli, "decode"}, bytes);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  auto limited = RunProcess({kCli, "decode", "--max-elements", "100", "-"}, bytes);
  EXPECT_EQ(limited.exit_code, 1);
  EXPECT_NE(limited.err.find("limit"), std::string::npos) << limited.err;
}

TEST(KvringEncode, RoundTripsDecodeOutputToMsgspecBytes) {
  std::string input;
  std::string want;
  for (const auto& c : Manifest()["cases"]) {
    if (!c["valid"].get<bool>() || !c["canonical"].get<bool>()) continue;
    input += c["expected"].dump() + "\n";
    want += ReadFile(VectorDir() + c["file"].get<std::string>());
  }
  auto r = RunProcess({kCli, "encode", "-"}, input);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, want);
}

TEST(KvringEncode, RefusesOutOfRangeIntegers) {
  auto r = RunProcess({kCli, "encode"},
                      R"({"type":"KVAdmitMsg","instance_id":"i","worker_id":0,"key":18446744073709551616,"location":"L"})"
                      "\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("-:1: overflow: can't serialize ints"), std::string::npos) << r.err;
}

TEST(KvringChunkHash, MatchesCPythonForEveryKindOfNoneHash) {
  auto doc = protocol::ParseJson(ReadFile(std::string(KVRING_TEST_DATA) + "/cpython-chunk-hash/seed123.json"));
  ASSERT_TRUE(doc.ok());
  int run = 0;
  for (const Json& c : (*doc)["cases"]) {
    if (c["tokens"].size() != 257 && c["tokens"].size() != 300) continue;
    std::vector<std::string> argv = {kCli, "chunk-hash", "--chunk-size", std::to_string(c["chunk_size"].get<int>()),
                                     "--python-hash-seed", c["pythonhashseed"].get<std::string>()};
    const Json& nh = c["none_hash"];
    if (nh["kind"] == "int") argv.insert(argv.end(), {"--none-hash", *protocol::JsonIntegerText(nh["value"])});
    else if (nh["kind"] == "hash_of_str") argv.insert(argv.end(), {"--none-hash-of-str", nh["value"].get<std::string>()});
    else argv.insert(argv.end(), {"--none-hash-of-bytes", nh["value_hex"].get<std::string>()});
    auto r = RunProcess(argv, c["tokens"].dump());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(*protocol::ParseJson(r.out), c["chunks"]);
    ++run;
  }
  EXPECT_GE(run, 5);
}

TEST(KvringCli, UsageErrorsExitTwoAndHelpExitsZero) {
  EXPECT_EQ(RunProcess({kCli}).exit_code, 2);
  EXPECT_EQ(RunProcess({kCli, "no-such-command"}).exit_code, 2);
  EXPECT_EQ(RunProcess({kCli, "chunk-hash", "--chunk-size", "0"}).exit_code, 2);
  EXPECT_EQ(RunProcess({kCli, "chunk-hash", "--none-hash", "1", "--none-hash-of-str", "x"}).exit_code, 2);
  for (const char* sub : {"decode", "encode", "chunk-hash"}) {
    auto r = RunProcess({kCli, sub, "--help"});
    EXPECT_EQ(r.exit_code, 0) << sub;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << sub << r.out;
  }
}

// ---- kvring inspect -------------------------------------------------------------

struct TestSegment {
  std::string controller = "inspect" + std::to_string(getpid());
  std::string shm = segment::SegmentPrefix(controller) + "1.7";
  std::optional<segment::Segment> seg;
  TestSegment() {
    segment::CreateOptions o;
    o.name = shm;
    o.request_capacity = 1 << 16;
    o.reply_capacity = 1 << 14;
    o.controller_name = controller;
    o.client_pid = getpid();
    o.client_id = 7;
    auto s = segment::Segment::Create(o);
    if (s.ok()) seg.emplace(std::move(s).value());
  }
};

TEST(KvringInspect, ShowsPendingRecordsDecodedWithoutConsumingThem) {
  TestSegment t;
  ASSERT_TRUE(t.seg.has_value());
  ring::Producer p(t.seg->ring_region(segment::kRequestRing), 1 << 16, t.seg->max_record(segment::kRequestRing));
  for (const char* f : {"KVAdmitMsg__edge.msgpack", "BatchedP2PLookupMsg__32.msgpack", "ErrorMsg__typical.msgpack"}) {
    std::string b = ReadFile(VectorDir() + f);
    ASSERT_EQ(p.TryWrite({reinterpret_cast<const std::uint8_t*>(b.data()), b.size()}, framing::kMessage), ring::ClaimResult::kOk);
  }
  p.Publish();
  auto before = ring::Snapshot(t.seg->ring_region(segment::kRequestRing), 1 << 16);
  auto r = RunProcess({kCli, "inspect", "--name", t.controller, "--json", "--peek", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto j = protocol::ParseJson(r.out);
  ASSERT_TRUE(j.ok()) << r.out;
  ASSERT_EQ((*j)["segments"].size(), 1u);
  const Json& seg = (*j)["segments"][0];
  EXPECT_EQ(seg["client_id"], 7);
  EXPECT_EQ(seg["client_alive"], true);
  EXPECT_EQ(seg["role"], "worker");
  const Json& req = seg["rings"][0];
  EXPECT_EQ(req["pending_records"], 3);
  EXPECT_EQ(req["quarantined"], false);
  ASSERT_EQ(req["peek"].size(), 2u);
  EXPECT_EQ(req["peek"][0]["type"], "KVAdmitMsg");
  EXPECT_EQ(req["peek"][1]["type"], "BatchedP2PLookupMsg");
  auto after = ring::Snapshot(t.seg->ring_region(segment::kRequestRing), 1 << 16);
  EXPECT_EQ(after.head, before.head);  // nothing consumed
  EXPECT_EQ(after.tail, before.tail);
  auto human = RunProcess({kCli, "inspect", "--name", t.controller});
  EXPECT_EQ(human.exit_code, 0);
  EXPECT_NE(human.out.find("pending 3 rec"), std::string::npos) << human.out;
}

TEST(KvringInspect, DescribesBrokenSegmentsAndExitsNonZero) {
  TestSegment t;
  ASSERT_TRUE(t.seg.has_value());
  // A scribbled ring position...
  auto* ctl = static_cast<ring::RingControl*>(t.seg->ring_region(segment::kReplyRing));
  ctl->tail.store(1 << 20);
  auto r = RunProcess({kCli, "inspect", "--name", t.controller});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("problem: replies (controller->client): more bytes pending than the capacity"),
            std::string::npos) << r.out;
  // ...a foreign magic...
  t.seg->header()->magic = 42;
  r = RunProcess({kCli, "inspect", "--name", t.controller, "--json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("not a kvring segment"), std::string::npos) << r.out;
  // ...a file too small (sealed at that size)...
  const std::string small = segment::SegmentPrefix(t.controller) + "1.8";
  int fd = memfd_create(small.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 100), 0);
  ASSERT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  r = RunProcess({kCli, "inspect", "--name", t.controller});
  close(fd);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("segment of 100 bytes is smaller than its header"), std::string::npos) << r.out;
  // ...and one its holder could still resize: never mapped (a truncation
  // under the mapping would kill inspect with SIGBUS).
  const std::string unsealed = segment::SegmentPrefix(t.controller) + "1.9";
  fd = memfd_create(unsealed.c_str(), MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(t.seg->size())), 0);
  r = RunProcess({kCli, "inspect", "--name", t.controller});
  close(fd);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("problem: segment " + unsealed + ": memory file not sealed against resizing"),
            std::string::npos) << r.out;
}

TEST(KvringInspect, NoSegmentsIsSaidPlainly) {
  auto r = RunProcess({kCli, "inspect", "--name", "nothing-here-" + std::to_string(getpid())});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("no kvring segments"), std::string::npos);
  EXPECT_EQ(RunProcess({kCli, "inspect", "--name", "bad.name"}).exit_code, 2);
}

TEST(KvringInspect, WatchRefreshesWithRates) {
  TestSegment t;
  ASSERT_TRUE(t.seg.has_value());
  auto r = RunProcess({kCli, "inspect", "--name", t.controller, "--watch", "--interval", "0.05", "--count", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("rec/s"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace kvring
