// Subcommands of the `kvring` tool. Each Add* registers its options on the
// CLI11 app and returns the function that runs it (exit code).
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace kvring::tools {

using Command = std::function<int()>;

Command AddDecode(CLI::App& app);
Command AddEncode(CLI::App& app);
Command AddChunkHash(CLI::App& app);
Command AddInspect(CLI::App& app);
Command AddStats(CLI::App& app);
Command AddLoad(CLI::App& app);
Command AddLookup(CLI::App& app);
Command AddWorkers(CLI::App& app);
Command AddClear(CLI::App& app);
Command AddHealth(CLI::App& app);
Command AddCheckFinish(CLI::App& app);
Command AddCluster(CLI::App& app);

}  // namespace kvring::tools
