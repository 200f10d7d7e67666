// SPDX-License-Identifier: Apache-2.0
// The plugin registry: the one place that knows which plugins exist. Each
// plugin is one line of the table in registry.cc (scheme, stable dotted
// name, factory); nothing registers itself.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cryo/error.h"
#include "cryo/store.h"

namespace cryo {

// Opens the store named by `url` ("file:///var/lib/cryo/store") with the
// plugin for its scheme. kInvalidArgument for an unknown scheme or a URL
// the plugin cannot parse (the message lists what is accepted); otherwise
// whatever the plugin's factory returns.
Result<std::unique_ptr<Store>> OpenStore(std::string_view url);

// The dotted names of the store plugins compiled in ("store.file", ...), in
// table order.
std::vector<std::string_view> KnownStorePlugins();

}  // namespace cryo
