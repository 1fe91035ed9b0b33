// kvring: the command-line tool for kvring's protocol and controller.
// Exit codes: 0 success, 1 the operation failed (bad input, no controller),
// 2 usage error.
#include <cstdio>
#include <iostream>
#include <map>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "kvring/version.h"

int main(int argc, char** argv) {
  CLI::App app{"kvring: LMCache-compatible KV cache controller tools"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every subcommand");
  app.set_version_flag("--version", "kvring " KVRING_VERSION_STRING);

  std::map<CLI::App*, kvring::tools::Command> commands;
  auto add = [&](auto adder, const char* name, const char* desc) {
    CLI::App* sub = app.add_subcommand(name, desc);
    commands[sub] = adder(*sub);
  };
  add(kvring::tools::AddDecode, "decode", "Decode msgpack messages to JSON lines");
  add(kvring::tools::AddEncode, "encode", "Encode JSON lines to msgpack (msgspec's bytes)");
  add(kvring::tools::AddChunkHash, "chunk-hash",
      "Chunk hashes of a token list, as LMCache's builtin-hash token database computes them");
  add(kvring::tools::AddInspect, "inspect", "Show the shared-memory segments and rings of a controller");
  add(kvring::tools::AddStats, "stats", "Print a running controller's counters");
  add(kvring::tools::AddLookup, "lookup", "Which instances hold the longest prefix of a token list (LookupMsg)");
  add(kvring::tools::AddWorkers, "workers", "List the registered workers (QueryWorkerInfoMsg)");
  add(kvring::tools::AddClear, "clear", "Clear a location on every worker of an instance (ClearMsg)");
  add(kvring::tools::AddHealth, "health", "Health codes of every worker of an instance (HealthMsg)");
  add(kvring::tools::AddCheckFinish, "check-finish", "State of an earlier clear, pin, move, ... by event id");
  add(kvring::tools::AddCluster, "cluster", "A cluster node's view of its cluster (kvringd --cluster)");
  add(kvring::tools::AddLoad, "load", "Run worker processes against a controller and report ops/s and lookup latency");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the message
    std::cerr << "Run with --help for usage.\n";
    return 2;
  }
  for (auto& [sub, run] : commands)
    if (sub->parsed()) return run();
  return 2;
}
