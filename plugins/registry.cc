// SPDX-License-Identifier: Apache-2.0
#include "registry.h"

#include <utility>

#include "store/file/file_store.h"

namespace cryo {
namespace {

using StoreFactory = Result<std::unique_ptr<Store>> (*)(std::string_view url);

struct StorePlugin {
  std::string_view scheme;  // the URL starts with scheme + "://"
  std::string_view name;    // stable dotted name
  StoreFactory open;
};

// Every plugin parses its own URLs into its own config struct, so the table
// needs one line per plugin and no adapter code.
template <auto kParse, auto kCreate>
Result<std::unique_ptr<Store>> ParseAndCreate(std::string_view url) {
  auto config = kParse(url);
  if (!config) return std::unexpected(config.error());
  return kCreate(*config);
}

constexpr StorePlugin kStorePlugins[] = {
    {"file", kFileStorePluginName, ParseAndCreate<FileStoreConfigFromUrl, CreateFileStore>},
};

std::string KnownSchemes() {
  std::string out;
  for (const auto& plugin : kStorePlugins) {
    if (!out.empty()) out += ", ";
    out += std::string(plugin.scheme) + "://";
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<Store>> OpenStore(std::string_view url) {
  size_t sep = url.find("://");
  if (sep != std::string_view::npos) {
    std::string_view scheme = url.substr(0, sep);
    for (const auto& plugin : kStorePlugins) {
      if (plugin.scheme == scheme) return plugin.open(url);
    }
  }
  return Fail(ErrorKind::kInvalidArgument,
              "unsupported store URL '" + std::string(url) + "' (known: " + KnownSchemes() + ")");
}

std::vector<std::string_view> KnownStorePlugins() {
  std::vector<std::string_view> names;
  for (const auto& plugin : kStorePlugins) names.push_back(plugin.name);
  return names;
}

}  // namespace cryo
