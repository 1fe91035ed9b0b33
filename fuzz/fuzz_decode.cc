// libFuzzer target for the message decoder. Besides "never crash", it checks
// the codec's own promises on whatever decodes:
//   - re-encoding a decoded message and decoding that gives the same message;
//   - the hot-path views agree with the generic decoder;
//   - the JSON conversion round-trips (where JSON can carry the values).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "kvring/protocol/codec.h"
#include "kvring/protocol/json.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvring::protocol;
  DecodeLimits limits;
  limits.max_depth = 200;  // keep libFuzzer's stack small; depth handling is unit-tested
  std::span<const std::uint8_t> bytes(data, size);

  auto m = Decode(bytes, limits);
  BatchedKVOperationView kv;
  BatchedP2PLookupView p2p;
  kvring::Status kv_st = Decode(bytes, &kv, limits);
  kvring::Status p2p_st = Decode(bytes, &p2p, limits);
  (void)PeekTag(bytes, limits);
  auto cmd = DecodeCommand(bytes, limits);
  if (cmd.ok()) {
    std::string again;
    EncodeCommand(*cmd, &again);
    auto c2 = DecodeCommand(std::span(reinterpret_cast<const std::uint8_t*>(again.data()), again.size()));
    Check(c2.ok());
  }
  if (!m.ok()) {
    Check(!kv_st.ok() && !p2p_st.ok());
    return 0;
  }
  std::string enc = Encode(*m);
  auto m2 = Decode(std::span(reinterpret_cast<const std::uint8_t*>(enc.data()), enc.size()));
  Check(m2.ok());
  Check(Encode(*m2) == enc);
  if (auto* g = std::get_if<BatchedKVOperationMsg>(&*m)) {
    Check(kv_st.ok() && kv.operations == g->operations && kv.instance_id == g->instance_id &&
          kv.worker_id == g->worker_id && kv.location == g->location);
  }
  if (auto* g = std::get_if<BatchedP2PLookupMsg>(&*m)) {
    Check(p2p_st.ok() && p2p.hashes == g->hashes && p2p.instance_id == g->instance_id);
  }
  auto back = MessageFromJson(ToJson(*m));
  Check(back.ok());
  // JSON cannot carry Any-typed bytes, ext or non-str dict keys (command
  // args), so only messages without Any values must come back identical.
  if (!std::holds_alternative<HeartbeatRetMsg>(*m)) Check(Encode(*back) == enc);
  return 0;
}
