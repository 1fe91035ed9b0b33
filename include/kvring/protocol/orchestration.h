// What the controller, the orchestrator clients and the HTTP API share about
// orchestration (LMCache's OrchMsgs): event ids, the error texts that tell
// what went wrong (the HTTP API maps them to status codes), and the health
// codes a HealthRetMsg may carry besides a worker's own.
//
// LMCache's ErrorMsg has one string field, so the kind of failure travels as
// the start of that string; ErrorClassOf() reads it back.
//
// Thread-safety: everything here is safe to call from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kvring::orchestration {

// A fresh event id: `prefix` + a random UUID4, as LMCache's API server makes
// them ("Lookup0b6f…", "health…").
std::string NewEventId(std::string_view prefix);

// Health codes (HealthRetMsg.error_codes values). A worker's own code is what
// its health handler returns (0: healthy). LMCache's three:
inline constexpr std::int64_t kHealthWorkerError = -1001;   // the worker answered ErrorMsg
inline constexpr std::int64_t kHealthWrongReply = -1002;    // it answered another message type
inline constexpr std::int64_t kHealthUndecodable = -1003;   // its answer could not be decoded
// kvring's own:
inline constexpr std::int64_t kHealthNoReply = -1004;       // no answer before the deadline
inline constexpr std::int64_t kHealthUnreachable = -1005;   // the command could not be delivered
                                                            // (worker gone, its ring full)

// How an ErrorMsg text starts, by kind of failure.
inline constexpr std::string_view kUnknownInstance = "unknown instance";  // -> HTTP 404
inline constexpr std::string_view kUnknownEvent = "unknown event id";     // -> HTTP 404
inline constexpr std::string_view kDeadline = "deadline passed";          // -> HTTP 504
inline constexpr std::string_view kWorkerFailed = "worker failed";        // -> HTTP 502
inline constexpr std::string_view kInvalid = "invalid request";           // -> HTTP 400

enum class ErrorClass { kUnknownInstance, kUnknownEvent, kDeadline, kWorkerFailed, kInvalid, kOther };
ErrorClass ErrorClassOf(std::string_view error_text);

// CheckFinishRetMsg.status: the overall state first, then, unless every
// worker finished, "; worker <id>: <state>" for each worker.
inline constexpr std::string_view kStatusPending = "pending";
inline constexpr std::string_view kStatusFinished = "finished";
inline constexpr std::string_view kStatusFailed = "failed";

}  // namespace kvring::orchestration
