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
  Status s(ErrorKind::kCorrupt, "head 12 is not 8-aligned");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.kind(), ErrorKind::kCorrupt);
  EXPECT_EQ(s.detail().code, 0);
  EXPECT_EQ(s.ToString(), "corrupt: head 12 is not 8-aligned");
}

TEST(Status, ALayersDetailRefinesTheKindAndNamesTheError) {
  Status s(ErrorKind::kProtocol, ErrorDetail{7, "frame error"}, "bad frame");
  EXPECT_EQ(s.kind(), ErrorKind::kProtocol);
  EXPECT_EQ(s.detail().code, 7);
  EXPECT_EQ(s.ToString(), "frame error: bad frame");
  Status copy = s;
  EXPECT_EQ(copy.detail().code, 7);
  EXPECT_EQ(copy.ToString(), "frame error: bad frame");
  EXPECT_EQ(Status(ErrorKind::kProtocol, "no detail").ToString(), "protocol error: no detail");
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
