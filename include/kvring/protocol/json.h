// JSON views of messages, in the shape of msgspec.to_builtins(msg) written as
// JSON: the tag under "type" first, fields in declaration order, tuples as
// arrays, OpType as its value string, WorkerInfo as an object, Dict[int, int]
// keys as decimal strings (JSON has only string keys), exact integers.
// Bytes inside Any values become base64 strings (as to_builtins does); an Ext
// becomes {"ext_type": n, "data": "<base64>"}.
//
// The reverse conversion accepts that same shape, so `kvring encode` can turn
// `kvring decode` output back into msgspec's bytes.
//
// Thread-safety: reentrant.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kvring/protocol/messages.h"
#include "kvring/status.h"

namespace kvring::protocol {

using Json = nlohmann::ordered_json;

Json ToJson(const Message& m);
Json ToJson(const HeartbeatCommand& c);

Result<Message> MessageFromJson(const Json& j);
Result<HeartbeatCommand> CommandFromJson(const Json& j);

// Parses JSON text. Integer literals beyond int64/uint64 are kept exactly
// (nlohmann would round them to double); JsonIntegerText() reads them back,
// and the message conversion reports them as msgspec's OverflowError.
Result<Json> ParseJson(std::string_view text);
// Decimal text of an integer JSON value (including big ones), else nullopt.
std::optional<std::string> JsonIntegerText(const Json& j);

}  // namespace kvring::protocol
