// SPDX-License-Identifier: Apache-2.0
// TempDir: a fresh directory under /tmp for one test, removed with its
// contents when the object goes away.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>

#include "cryo/file_util.h"

namespace cryo {

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/cryo_test.XXXXXX";
    if (::mkdtemp(pattern) != nullptr) path_ = pattern;
    EXPECT_FALSE(path_.empty()) << "mkdtemp failed";
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    if (path_.empty()) return;
    EXPECT_TRUE(RemoveTree(path_).has_value()) << "cannot remove " << path_;
  }

  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace cryo
