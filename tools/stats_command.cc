// kvring stats: attach to a controller as a client and print its counters.
#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "kvring/client/client.h"

namespace kvring::tools {

Command AddStats(CLI::App& app) {
  struct State {
    std::string name = "kvring";
    bool json = false;
    bool digest = false;
    int timeout_ms = 1000;
  };
  auto st = std::make_shared<State>();
  app.description(
      "Print the counters of a running controller (clients, workers, keys, ops, lookups, errors,\n"
      "full-sync progress). Exit 0 when the controller answered, 1 when none of that name runs.");
  app.add_option("--name", st->name, "Controller name")->capture_default_str();
  app.add_flag("--json", st->json, "One JSON object");
  app.add_flag("--digest", st->digest,
               "Also an order-independent digest of the whole index (equal digests: equal indexes; "
               "walks every key, so it pauses a large controller briefly)");
  app.add_option("--timeout", st->timeout_ms, "Milliseconds to wait for the controller")->check(CLI::Range(1, 600000));
  return [st]() -> int {
    auto timeout = std::chrono::milliseconds(st->timeout_ms);
    auto r = client::ControlRequest(st->name, R"({"op":"stats"})", timeout);
    if (!r.ok()) {
      std::cerr << "error: " << r.status().message() << "\n";
      return 1;
    }
    auto j = nlohmann::json::parse(*r, nullptr, false);
    if (!j.is_object()) {
      std::cerr << "error: the controller's reply is not a JSON object\n";
      return 1;
    }
    if (st->digest) {
      auto d = client::ControlRequest(st->name, R"({"op":"digest"})", timeout);
      auto dj = d.ok() ? nlohmann::json::parse(*d, nullptr, false) : nlohmann::json();
      if (!dj.is_object() || !dj.contains("digest")) {
        std::cerr << "error: digest request failed" << (d.ok() ? "" : ": " + d.status().message()) << "\n";
        return 1;
      }
      j["digest"] = dj["digest"];
    }
    if (st->json) {
      std::cout << j.dump() << std::endl;
      return 0;
    }
    std::size_t width = 0;
    for (auto it = j.begin(); it != j.end(); ++it) width = std::max(width, it.key().size());
    for (auto it = j.begin(); it != j.end(); ++it) {
      std::cout << it.key() << std::string(width + 2 - it.key().size(), ' ');
      if (it->is_string()) std::cout << it->get<std::string>() << "\n";
      else std::cout << it->dump() << "\n";
    }
    return 0;
  };
}

}  // namespace kvring::tools
