#include "kvring/status.h"

#include <gtest/gtest.h>

namespace kvring {
namespace {

TEST(Status, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "ok");
}

TEST(Status, ErrorKeepsKindAndMessage) {
  Status s(ErrorKind::kDecode, "truncated at byte 3 of 3");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.kind(), ErrorKind::kDecode);
  EXPECT_EQ(s.ToString(), "decode error: truncated at byte 3 of 3");
}

TEST(Result, HoldsAValueOrAnError) {
  Result<int> good(42);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 42);
  EXPECT_TRUE(good.status().ok());
  Result<int> bad(Status(ErrorKind::kTimeout, "no reply"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().kind(), ErrorKind::kTimeout);
}

}  // namespace
}  // namespace kvring
