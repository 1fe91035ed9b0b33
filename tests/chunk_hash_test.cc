#include "kvring/protocol/chunk_hash.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace kvring {
namespace {

using protocol::Json;

// Values every CPython 3.11 (64-bit) prints, independent of PYTHONHASHSEED.
TEST(PyHash, IntHashMatchesCPython) {
  EXPECT_EQ(pyhash::HashInt(0), 0);
  EXPECT_EQ(pyhash::HashInt(1), 1);
  EXPECT_EQ(pyhash::HashInt(-1), -2);                          // -1 is reserved
  EXPECT_EQ(pyhash::HashInt((1LL << 61) - 1), 0);              // the modulus
  EXPECT_EQ(pyhash::HashInt(1LL << 61), 1);
  EXPECT_EQ(pyhash::HashInt(INT64_MIN), -4);                   // 2^63 mod (2^61-1) = 4
  EXPECT_EQ(pyhash::HashInt(protocol::Int::FromU64(~0ULL)), 7);  // (2^64-1) mod (2^61-1)
  EXPECT_EQ(*pyhash::HashDecimal("18446744073709551615"), 7);
  EXPECT_EQ(*pyhash::HashDecimal("-2305843009213693952"), -2);  // -(2^61) -> -1 -> -2
  EXPECT_FALSE(pyhash::HashDecimal("12x").ok());
}

TEST(PyHash, TupleHashMatchesCPython) {
  EXPECT_EQ(pyhash::HashTuple({}), 5740354900026072187LL);  // hash(())
  const std::int64_t one_two[] = {1, 2};
  EXPECT_EQ(pyhash::HashTuple(one_two), -3550055125485641917LL);  // hash((1, 2))
}

TEST(PyHash, EmptyStrAndBytesHashToZero) {
  auto key = pyhash::KeyFromSeed(123);
  EXPECT_EQ(pyhash::HashBytes("", key), 0);
  EXPECT_EQ(*pyhash::HashStr("", key), 0);
}

std::int64_t NoneItemHash(const Json& c) {
  const Json& nh = c["none_hash"];
  std::string kind = nh["kind"].get<std::string>();
  std::uint32_t seed = static_cast<std::uint32_t>(std::stoul(c["pythonhashseed"].get<std::string>()));
  auto key = pyhash::KeyFromSeed(seed);
  std::int64_t none_value_hash;
  if (kind == "int") {
    return *pyhash::HashDecimal(*protocol::JsonIntegerText(nh["value"]));
  } else if (kind == "hash_of_str") {
    none_value_hash = *pyhash::HashStr(nh["value"].get<std::string>(), key);
  } else {
    auto bytes = testing::Hex(nh["value_hex"].get<std::string>());
    none_value_hash = pyhash::HashBytes(std::string(bytes.begin(), bytes.end()), key);
  }
  // The vectors record the NONE_HASH value itself: the str/bytes hash.
  EXPECT_EQ(none_value_hash, c["none_hash_value"].get<std::int64_t>());
  return pyhash::HashInt(none_value_hash);
}

class CPythonVectors : public ::testing::TestWithParam<const char*> {};

TEST_P(CPythonVectors, EveryChunkHashMatches) {
  auto doc = protocol::ParseJson(testing::ReadFile(std::string(KVRING_TEST_DATA) + "/cpython-chunk-hash/" + GetParam()));
  ASSERT_TRUE(doc.ok());
  int chunks = 0;
  for (const Json& c : (*doc)["cases"]) {
    std::vector<std::int64_t> tokens = c["tokens"].get<std::vector<std::int64_t>>();
    ChunkHasher h(c["chunk_size"].get<std::uint32_t>(), NoneItemHash(c));
    auto got = h.Hash(tokens);
    const Json& want = c["chunks"];
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].start, want[i][0].get<std::uint64_t>());
      EXPECT_EQ(got[i].end, want[i][1].get<std::uint64_t>());
      EXPECT_EQ(got[i].hash, want[i][2].get<std::int64_t>()) << "case with " << tokens.size()
                                                             << " tokens, chunk " << i;
      ++chunks;
    }
  }
  EXPECT_GT(chunks, 50);
}

INSTANTIATE_TEST_SUITE_P(Seeds, CPythonVectors, ::testing::Values("seed0.json", "seed123.json"));

}  // namespace
}  // namespace kvring
