// The `kvring` tool, run as a real process.
#include <gtest/gtest.h>

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

TEST(KvringDecode, PrintsEveryValidVectorAsItsExpectedJson) {
  std::vector<std::string> argv = {kCli, "decode"};
  std::vector<const Json*> cases;
  for (const auto& c : Manifest()["cases"]) {
    if (!c["valid"].get<bool>()) continue;
    argv.push_back(VectorDir() + c["file"].get<std::string>());
    cases.push_back(&c);
  }
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

}  // namespace
}  // namespace kvring
