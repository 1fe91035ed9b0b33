// `kvring inspect`: a read-only look at every kvring segment (in the spirit of
// Aeron's aeron_stat). Segments are memory files found in /proc/<pid>/fd
// (segment::FindSegments: the controller's and its clients' descriptors, so
// inspect sees what the user it runs as may read), mapped read-only and never
// written; a garbage, truncated, unsealed or half-made segment is described,
// not trusted: nothing in a ring is read until the header has been validated
// against the real size of the mapping.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <thread>

#include "commands.h"
#include "kvring/protocol/codec.h"
#include "kvring/protocol/json.h"
#include "kvring/shm/ring.h"
#include "kvring/shm/segment.h"
#include "kvring/zmq/front.h"
#include "kvring/shm/framing.h"

namespace kvring::tools {
namespace {

using protocol::Json;
using segment::SegmentHeader;

using segment::RoleName;

// Everything inspect says about one segment, as JSON; "problems" lists what is wrong.
Json InspectSegment(const segment::FoundSegment& found, std::size_t peek) {
  Json j = Json::object();
  j["segment"] = found.name;
  j["holder_pid"] = found.holder;
  Json problems = Json::array();
  auto done = [&](std::string problem) {
    problems.push_back(std::move(problem));
    j["problems"] = problems;
    return j;
  };
  const int fd = open(found.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return done("cannot open " + found.path + ": " + std::strerror(errno));
  // Adopt checks the seals (an unsealed file could shrink under the mapping),
  // the size, and validates the header once; the rings are then found
  // through its private copy of the placement, never through the header again.
  auto seg = segment::Segment::Adopt(fd, /*read_only=*/true, /*require_ready=*/false);
  if (!seg.ok()) return done(seg.status().message());
  j["bytes"] = seg->size();
  const SegmentHeader* h = seg->header();
  {
    std::uint32_t state = h->state.load(std::memory_order_acquire);  // pairs with Segment::Create
    j["state"] = state == segment::kReady ? "ready" : state == segment::kClosed ? "closed" : "initialising";
    if (state != segment::kReady && state != segment::kClosed) problems.push_back("not initialised (no ready word)");
    std::string cname(h->controller_name, strnlen(h->controller_name, sizeof h->controller_name));
    j["controller"] = cname;
    j["controller_pid"] = h->controller_pid;
    j["controller_alive"] = segment::ProcessAlive(static_cast<pid_t>(h->controller_pid), h->controller_start_ticks);
    j["client_pid"] = h->client_pid;
    j["client_alive"] = segment::ProcessAlive(static_cast<pid_t>(h->client_pid), h->client_start_ticks);
    j["role"] = RoleName(h->role);
    j["client_id"] = h->client_id;
    j["generation"] = h->generation;
    std::uint64_t now = segment::MonotonicNs();
    auto age_ms = [&](std::uint64_t t) -> Json {
      if (t == 0 || t > now) return nullptr;
      return static_cast<double>(now - t) / 1e6;
    };
    j["controller_heartbeat_age_ms"] = age_ms(h->controller_heartbeat_ns.load(std::memory_order_relaxed));
    j["client_heartbeat_age_ms"] = age_ms(h->client_heartbeat_ns.load(std::memory_order_relaxed));
    if (h->role == static_cast<std::uint32_t>(segment::Role::kFront)) {
      // The ZeroMQ front's own report (its peers, frames, drops): display only.
      Json zmq = Json::object();
      const segment::ClientCounters* c = segment::CountersOf(h);
      for (std::size_t i = 0; i < zmqfront::kFrontCounterCount; ++i)
        zmq[zmqfront::kFrontCounterNames[i]] = c->slot[i].load(std::memory_order_relaxed);
      j["zmq"] = zmq;
    }
    if (!j["controller_alive"].get<bool>()) problems.push_back("controller is gone: only its client still holds this segment");
    std::uint32_t quarantined = h->quarantined.load(std::memory_order_relaxed);
    Json rings = Json::array();
    for (int r = 0; r < 2; ++r) {
      const void* region_base = seg->ring_region(r);
      const std::size_t cap = seg->capacity(r), max_record = seg->max_record(r);
      ring::RingSnapshot s = ring::Snapshot(region_base, cap);
      Json rj = Json::object();
      rj["ring"] = r == segment::kRequestRing ? "requests (client->controller)" : "replies (controller->client)";
      rj["capacity"] = cap;
      rj["max_record"] = max_record;
      rj["head"] = s.head;
      rj["tail"] = s.tail;
      rj["records_published"] = s.records_published;
      rj["records_consumed"] = s.records_consumed;
      rj["quarantined"] = (quarantined >> r & 1) != 0;
      rj["consumer_waiting"] = s.consumer_waiting;
      if (!s.problem.empty()) {
        rj["problem"] = s.problem;
        problems.push_back(std::string(rj["ring"]) + ": " + s.problem);
      } else {
        std::uint64_t pending = s.pending_bytes();
        rj["pending_bytes"] = pending;
        rj["fill_percent"] = 100.0 * static_cast<double>(pending) / static_cast<double>(cap);
        std::size_t count = 0;
        Json peeked = Json::array();
        std::string bad = ring::PeekPending(region_base, cap, max_record, SIZE_MAX, [&](const ring::Record& rec) {
          if (count++ >= peek) return;
          if (rec.type == framing::kControl) {
            peeked.push_back(Json{{"control", std::string(rec.payload.begin(), rec.payload.end())}});
            return;
          }
          // Correlated records (framing.h: a request or command id, then the message):
          // the id is shown under "correlation_id" before the message's fields.
          auto corr = framing::SplitCorrelated(rec);
          auto m = protocol::Decode(corr ? corr->message : rec.payload);
          Json entry = Json::object();
          if (corr) entry["correlation_id"] = corr->id;
          if (m.ok()) entry.update(protocol::ToJson(*m));
          else entry.update(Json{{"undecodable", m.status().ToString()}, {"bytes", rec.payload.size()}});
          peeked.push_back(entry);
        });
        rj["pending_records"] = count;
        if (peek) rj["peek"] = peeked;
        if (!bad.empty()) {
          rj["problem"] = bad;
          problems.push_back(std::string(rj["ring"]) + ": " + bad);
        }
      }
      if (rj["quarantined"].get<bool>()) problems.push_back(std::string(rj["ring"]) + " is quarantined");
      rings.push_back(rj);
    }
    j["rings"] = rings;
  }
  j["problems"] = problems;
  return j;
}

void PrintHuman(const Json& seg, const Json* prev, double seconds) {
  std::cout << seg["segment"].get<std::string>();
  if (seg.contains("role"))
    std::cout << "  " << seg["role"].get<std::string>() << " pid " << seg["client_pid"]
              << (seg["client_alive"].get<bool>() ? " (alive)" : " (gone)") << ", controller '"
              << seg["controller"].get<std::string>() << "' pid " << seg["controller_pid"]
              << (seg["controller_alive"].get<bool>() ? " (alive)" : " (gone)") << ", client id "
              << seg["client_id"] << ", generation " << seg["generation"] << ", " << seg["state"].get<std::string>();
  std::cout << "\n";
  if (seg.contains("controller_heartbeat_age_ms")) {
    auto age = [](const Json& a) { return a.is_null() ? std::string("never") : std::to_string(a.get<double>()) + " ms"; };
    std::cout << "  heartbeat age: controller " << age(seg["controller_heartbeat_age_ms"]) << ", client "
              << age(seg["client_heartbeat_age_ms"]) << "\n";
  }
  if (seg.contains("rings")) {
    for (std::size_t r = 0; r < seg["rings"].size(); ++r) {
      const Json& rj = seg["rings"][r];
      std::cout << "  " << std::left << std::setw(30) << rj["ring"].get<std::string>() << " cap " << rj["capacity"]
                << "  head " << rj["head"] << "  tail " << rj["tail"];
      if (rj.contains("pending_bytes"))
        std::cout << "  pending " << rj["pending_records"] << " rec / " << rj["pending_bytes"] << " B ("
                  << std::fixed << std::setprecision(1) << rj["fill_percent"].get<double>() << "%)";
      if (rj["quarantined"].get<bool>()) std::cout << "  QUARANTINED";
      if (prev && seconds > 0 && prev->contains("rings")) {
        const Json& pr = (*prev)["rings"][r];
        double recs = static_cast<double>(rj["records_consumed"].get<std::uint64_t>() -
                                          pr["records_consumed"].get<std::uint64_t>()) / seconds;
        double bytes = static_cast<double>(rj["head"].get<std::uint64_t>() - pr["head"].get<std::uint64_t>()) / seconds;
        std::cout << "  " << std::setprecision(0) << recs << " rec/s " << bytes << " B/s";
      }
      std::cout << "\n";
      if (rj.contains("peek"))
        for (const auto& m : rj["peek"]) std::cout << "    " << m.dump() << "\n";
    }
  }
  if (seg.contains("zmq")) {
    // Counters with rates between refreshes (--watch) for those that only grow.
    std::ostringstream line;
    line << std::fixed << std::setprecision(0) << "  zmq:";
    for (const auto& [k, v] : seg["zmq"].items()) {
      line << " " << k << " " << v.get<std::uint64_t>();
      const bool gauge = k == "peers" || k == "requests_in_flight" || k == "command_links";
      if (!gauge && prev && prev->contains("zmq") && seconds > 0) {
        double d = static_cast<double>(v.get<std::uint64_t>()) - (*prev)["zmq"][k].get<double>();
        line << " (" << std::max(0.0, d / seconds) << "/s)";
      }
      line << ",";
    }
    std::string text = line.str();
    text.pop_back();
    std::cout << text << "\n";
  }
  for (const auto& p : seg["problems"]) std::cout << "  problem: " << p.get<std::string>() << "\n";
}

}  // namespace

Command AddInspect(CLI::App& app) {
  struct State {
    std::string name;
    bool json = false;
    bool watch = false;
    std::size_t peek = 0;
    double interval = 1.0;
    int count = 0;
  };
  auto st = std::make_shared<State>();
  app.description(
      "Show every shared-memory segment of a kvring controller (or of all controllers): owner\n"
      "processes and whether they live, ring positions, pending records, fill, heartbeat age,\n"
      "quarantine. Read-only: segments are mapped read-only and nothing is consumed.\n"
      "Exit 0 when every segment is sound, 1 when a problem was found or none exists.");
  app.add_option("--name", st->name, "Controller name (default: every kvring segment)");
  app.add_flag("--json", st->json, "One JSON object per refresh: {\"segments\": [...]}");
  app.add_option("--peek", st->peek, "Decode the next K pending records of each ring (not consumed)");
  app.add_flag("--watch", st->watch, "Refresh every --interval seconds with rates");
  app.add_option("--interval", st->interval, "Seconds between refreshes with --watch")->check(CLI::Range(0.05, 3600.0));
  app.add_option("--count", st->count, "With --watch: stop after N refreshes (0 = forever)");
  return [st]() -> int {
    if (!st->name.empty()) {
      if (Status s = segment::ValidateControllerName(st->name); !s.ok()) {
        std::cerr << "error: " << s.message() << "\n";
        return 2;
      }
    }
    std::string prefix = st->name.empty() ? "kvring." : segment::SegmentPrefix(st->name);
    std::map<std::string, Json> prev;
    auto last = std::chrono::steady_clock::now();
    int rc = 0;
    for (int round = 0;; ++round) {
      auto now = std::chrono::steady_clock::now();
      double seconds = std::chrono::duration<double>(now - last).count();
      last = now;
      Json all = Json::array();
      rc = 0;
      for (const auto& found : segment::FindSegments(prefix)) {
        Json seg = InspectSegment(found, st->peek);
        if (!seg["problems"].empty()) rc = 1;
        all.push_back(seg);
      }
      if (all.empty()) rc = 1;
      if (st->json) {
        std::cout << Json{{"segments", all}}.dump() << std::endl;
      } else {
        if (st->watch) std::cout << "--- " << all.size() << " segment(s)\n";
        if (all.empty())
          std::cout << "no kvring segments" << (st->name.empty() ? "" : " for controller '" + st->name + "'") << "\n";
        for (const auto& seg : all) {
          auto it = prev.find(seg["segment"].get<std::string>());
          PrintHuman(seg, it == prev.end() ? nullptr : &it->second, seconds);
        }
        std::cout.flush();
      }
      if (!st->watch || (st->count > 0 && round + 1 >= st->count)) break;
      prev.clear();
      for (const auto& seg : all) prev[seg["segment"].get<std::string>()] = seg;
      std::this_thread::sleep_for(std::chrono::duration<double>(st->interval));
    }
    return rc;
  };
}

}  // namespace kvring::tools
