// SPDX-License-Identifier: Apache-2.0
// Data for tests of the image pipeline: reproducible pseudo-random bytes and
// a fixed daemon key.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>

#include "cryo/image_store.h"

namespace cryo {

// `n` pseudo-random bytes, the same for the same `seed`.
inline std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

// A fixed key; different `fill`s give different keys.
inline Key TestKey(unsigned char fill = 7) {
  std::array<unsigned char, Key::kBytes> bytes;
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(fill + i);
  return Key::FromBytes(bytes);
}

}  // namespace cryo
