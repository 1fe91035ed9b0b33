// libFuzzer target for what a node reads from the cluster's NATS subjects and
// lease bucket (anything there may come from a hostile publisher). Besides
// "never crash", it checks the decoders' promises on whatever they accept:
//   - a delta message is canonical: the records handed on, written again with
//     DeltaWriter under the same header, give the same bytes;
//   - every record handed on decodes again on its own (DecodeChange), and
//     every key and op of a keys record can be read;
//   - nothing is handed on unless the whole message is valid;
//   - a lease value is canonical: EncodeLease of what decoded gives the input.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string_view>
#include <vector>

#include "kvring/cluster/delta_message.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvring;
  const std::span<const std::uint8_t> bytes(data, size);

  cluster::DeltaHeader h;
  std::vector<std::span<const std::uint8_t>> records;
  std::uint64_t sum = 0;  // reads every key and op, so a bad bound would show under ASan
  const Status st = cluster::DecodeDeltaMessage(bytes, &h, [&](const feed::Change& c, std::span<const std::uint8_t> r) {
    Check(r.data() >= data && r.data() + r.size() <= data + size);
    records.push_back(r);
    if (c.kind == feed::ChangeKind::kKeys)
      for (std::size_t i = 0; i < c.count; ++i) sum += c.KeyAt(i) + static_cast<std::uint64_t>(c.OpAt(i));
  });
  if (st.ok()) {
    Check(records.size() == h.records);
    cluster::DeltaWriter w;
    w.Begin(h.epoch, h.first_seq);
    for (const auto& r : records) {
      feed::Change again;
      Check(feed::DecodeChange(r, &again).ok());
      w.Add(r);
    }
    const std::span<const std::uint8_t> out = w.Finish();
    Check(out.size() == size && std::equal(out.begin(), out.end(), bytes.begin()));
  } else {
    Check(records.empty());
  }
  volatile std::uint64_t sink = sum;
  (void)sink;

  cluster::LeaseValue lease{7, 7};
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (cluster::DecodeLease(text, &lease)) Check(cluster::EncodeLease(lease) == text);
  else Check(lease.epoch == 7 && lease.rebuild_from_seq == 7);  // untouched on refusal
  return 0;
}
