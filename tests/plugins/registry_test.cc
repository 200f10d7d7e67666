// SPDX-License-Identifier: Apache-2.0
#include "registry.h"

#include <gtest/gtest.h>

#include <string>

#include "runtime/temp_dir.h"

namespace cryo {
namespace {

TEST(OpenStoreTest, OpensFileUrlAndKeepsItsUrl) {
  TempDir dir;
  std::string url = "file://" + dir.Join("store");
  auto store = OpenStore(url);
  ASSERT_TRUE(store.has_value()) << store.error().ToString();
  EXPECT_EQ((*store)->url(), url);
  ASSERT_TRUE((*store)->Put("refs/web/latest", "id").has_value());
  auto back = (*store)->Get("refs/web/latest");
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(*back, "id");
}

TEST(OpenStoreTest, RefusesRelativeFilePathSayingWhatIsValid) {
  for (std::string url : {"file://relative/store", "file://", "file://./x"}) {
    auto store = OpenStore(url);
    ASSERT_FALSE(store.has_value()) << url;
    EXPECT_EQ(store.error().kind(), ErrorKind::kInvalidArgument) << url;
    EXPECT_NE(store.error().message().find("'" + url + "'"), std::string::npos)
        << store.error().message();
    EXPECT_NE(store.error().message().find("file:///"), std::string::npos)
        << "should show a valid URL: " << store.error().message();
  }
}

TEST(OpenStoreTest, RefusesUnknownSchemesListingKnownOnes) {
  for (std::string url : {"s4://bucket/x", "/var/lib/cryo/store", "", "FILE:///x"}) {
    auto store = OpenStore(url);
    ASSERT_FALSE(store.has_value()) << url;
    EXPECT_EQ(store.error().kind(), ErrorKind::kInvalidArgument) << url;
    EXPECT_EQ(store.error().message(), "unsupported store URL '" + url + "' (known: file://)");
  }
}

TEST(OpenStoreTest, PassesFactoryErrorsThrough) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.Join("file"), "x").has_value());
  auto store = OpenStore("file://" + dir.Join("file"));
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().kind(), ErrorKind::kFailedPrecondition);
}

TEST(KnownStorePluginsTest, ListsDottedNames) {
  auto names = KnownStorePlugins();
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names.front(), "store.file");
  for (auto name : names) EXPECT_TRUE(name.starts_with("store.")) << name;
}

}  // namespace
}  // namespace cryo
