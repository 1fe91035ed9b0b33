#include "kvring/protocol/json.h"
#include "kvring/protocol/errors.h"

#include <gtest/gtest.h>

#include "../test_util.h"
#include "kvring/protocol/codec.h"

namespace kvring::protocol {
namespace {

using kvring::testing::AsBytes;
using kvring::testing::Hex;
using kvring::testing::Manifest;
using kvring::testing::ReadFile;
using kvring::testing::VectorDir;

TEST(JsonToMsgpack, ExpectedValuesEncodeToMsgspecBytes) {
  int checked = 0;
  for (const auto& c : Manifest()["cases"]) {
    if (!c["valid"].get<bool>()) continue;
    SCOPED_TRACE(c["file"].get<std::string>());
    std::string want = c["canonical"].get<bool>()
                           ? ReadFile(VectorDir() + c["file"].get<std::string>())
                           : [&] { auto h = Hex(c["canonical_hex"].get<std::string>());
                                   return std::string(h.begin(), h.end()); }();
    std::string out;
    if (c["decode_as"] == "AnyCommand") {
      auto cmd = CommandFromJson(c["expected"]);
      ASSERT_TRUE(cmd.ok()) << cmd.status().ToString();
      EncodeCommand(*cmd, &out);
    } else {
      auto m = MessageFromJson(c["expected"]);
      ASSERT_TRUE(m.ok()) << m.status().ToString();
      out = Encode(*m);
    }
    EXPECT_EQ(out, want);
    ++checked;
  }
  EXPECT_EQ(checked, 140);
}

TEST(JsonToMsgpack, IntegersOutsideTheWireRangeAreOverflow) {
  // The manifest's encode_errors: msgspec refuses these with OverflowError.
  for (const char* text : {
           R"({"type":"KVAdmitMsg","instance_id":"i","worker_id":0,"key":18446744073709551616,"location":"L","seq_num":0})",
           R"({"type":"KVAdmitMsg","instance_id":"i","worker_id":0,"key":-9223372036854775809,"location":"L","seq_num":0})",
           R"({"type":"BatchedP2PLookupMsg","hashes":[115792089237316195423570985008687907853269984665640564039457584007913129639935],"instance_id":"i","worker_id":0})"}) {
    auto j = ParseJson(text);
    ASSERT_TRUE(j.ok());
    auto m = MessageFromJson(*j);
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(ProtocolErrorOf(m.status()), ProtocolError::kOverflow);
    EXPECT_NE(m.status().message().find("can't serialize ints < -2**63 or > 2**64 - 1"), std::string::npos);
  }
}

TEST(JsonToMsgpack, WrongShapesNameTheField) {
  auto j = ParseJson(R"({"type":"KVAdmitMsg","instance_id":"i","worker_id":"0","key":1,"location":"L"})");
  ASSERT_TRUE(j.ok());
  auto m = MessageFromJson(*j);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().message(), "expected int, got str - at `$.worker_id`");
  auto missing = MessageFromJson(*ParseJson(R"({"type":"KVAdmitMsg","instance_id":"i"})"));
  EXPECT_FALSE(missing.ok());
  auto unknown = MessageFromJson(*ParseJson(R"({"type":"NoSuchMsg"})"));
  EXPECT_EQ(unknown.status().message(), "unknown tag 'NoSuchMsg' - at `$.type`");
}

TEST(ParseJson, KeepsBigIntegersExact) {
  auto j = ParseJson("[1, -5, 18446744073709551615, 340282366920938463463374607431768211456, 1.5]");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(*JsonIntegerText((*j)[2]), "18446744073709551615");
  EXPECT_EQ(*JsonIntegerText((*j)[3]), "340282366920938463463374607431768211456");
  EXPECT_FALSE(JsonIntegerText((*j)[4]).has_value());
  EXPECT_FALSE(ParseJson("[1,").ok());
}

TEST(ToJson, BytesAndExtInAnyValuesAreText) {
  HeartbeatCommand c;
  c.args = ValueMap{{Value("b"), Value(Bytes{"\x01\x02\x03"})}, {Value("e"), Value(Ext{5, "xy"})}};
  Json j = ToJson(c);
  EXPECT_EQ(j["args"]["b"], "AQID");
  EXPECT_EQ(j["args"]["e"]["ext_type"], 5);
  EXPECT_EQ(j["args"]["e"]["data"], "eHk=");
}

}  // namespace
}  // namespace kvring::protocol
