#include "kvring/controller/change_feed.h"
#include "kvring/controller/remote_feed.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

namespace kvring::feed {

static_assert(std::endian::native == std::endian::little, "the feed's integers are stored in host order");

namespace {

Status Bad(const std::string& why) { return Status(ErrorKind::kProtocol, "change record: " + why); }

struct Reader {
  std::span<const std::uint8_t> b;
  std::size_t at = 0;
  template <typename T>
  bool Get(T* v) {
    if (b.size() - at < sizeof(T)) return false;
    std::memcpy(v, b.data() + at, sizeof(T));
    at += sizeof(T);
    return true;
  }
  bool Text(std::string_view* s) {
    std::uint16_t n;
    if (!Get(&n) || n > kMaxText || b.size() - at < n) return false;
    *s = std::string_view(reinterpret_cast<const char*>(b.data() + at), n);
    at += n;
    return true;
  }
};

template <typename T>
std::uint8_t* Put(std::uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
  return p + sizeof(T);
}

std::uint8_t* PutText(std::uint8_t* p, std::string_view s) {
  p = Put(p, static_cast<std::uint16_t>(s.size()));
  if (!s.empty()) std::memcpy(p, s.data(), s.size());
  return p + s.size();
}

std::uint8_t* Head(std::uint8_t* p, ChangeKind kind, std::uint32_t holder) {
  *p++ = static_cast<std::uint8_t>(kind);
  return Put(p, holder);
}

}  // namespace

Result<PrivateRing> PrivateRing::Create(std::size_t capacity, std::string_view what) {
  if (Status s = ring::ValidateGeometry(capacity, ring::DefaultMaxRecord(capacity)); !s.ok()) return s;
  // Page-aligned, the size rounded up to whole pages (aligned_alloc wants a
  // multiple of the alignment).
  const std::size_t bytes = (ring::RegionBytes(capacity) + 4095) & ~std::size_t{4095};
  void* region = std::aligned_alloc(4096, bytes);
  if (!region)
    return Status(ErrorKind::kInternal, std::string(what) + ": out of memory for a ring of " + std::to_string(capacity));
  if (Status s = ring::InitializeRegion(region, capacity); !s.ok()) {
    std::free(region);
    return s;
  }
  return PrivateRing(region, capacity);
}

PrivateRing::PrivateRing(void* region, std::size_t capacity)
    : region_(region),
      capacity_(capacity),
      producer_(region, capacity, ring::DefaultMaxRecord(capacity)),
      consumer_(region, capacity, ring::DefaultMaxRecord(capacity)) {}

Status DecodeChange(std::span<const std::uint8_t> bytes, Change* out) {
  Reader r{bytes};
  std::uint8_t kind;
  if (!r.Get(&kind) || !r.Get(&out->holder)) return Bad("shorter than its header");
  switch (static_cast<ChangeKind>(kind)) {
    case ChangeKind::kHolderUp:
      out->kind = ChangeKind::kHolderUp;
      if (!r.Get(&out->worker_id) || !r.Text(&out->instance_id) || !r.Text(&out->location) ||
          !r.Text(&out->peer_init_url))
        return Bad("holder-up record truncated or a text longer than " + std::to_string(kMaxText));
      break;
    case ChangeKind::kHolderDown:
      out->kind = ChangeKind::kHolderDown;
      break;
    case ChangeKind::kResync: {
      out->kind = ChangeKind::kResync;
      std::uint8_t forced;
      if (!r.Get(&forced) || forced > 1) return Bad("resync record without a valid forced flag");
      out->forced = forced == 1;
      break;
    }
    case ChangeKind::kResyncEnd:
      out->kind = ChangeKind::kResyncEnd;
      break;
    case ChangeKind::kKeys: {
      out->kind = ChangeKind::kKeys;
      if (!r.Get(&out->count)) return Bad("keys record without its count");
      const std::size_t need = KeysBytes(out->count);
      if (bytes.size() - r.at != need) return Bad("keys record of " + std::to_string(out->count) + " keys has " +
                                                  std::to_string(bytes.size() - r.at) + " bytes of entries");
      out->keys = bytes.subspan(r.at, std::size_t{out->count} * 8);
      out->ops = bytes.subspan(r.at + out->keys.size(), need - out->keys.size());
      if (out->count % 8 != 0 && (out->ops.back() >> (out->count % 8)) != 0) return Bad("op bits past the last key");
      r.at += need;
      break;
    }
    default:
      return Bad("unknown kind " + std::to_string(kind));
  }
  if (r.at != bytes.size()) return Bad(std::to_string(bytes.size() - r.at) + " bytes after the record");
  return Status::Ok();
}

Result<std::unique_ptr<ChangeFeed>> ChangeFeed::Create(std::size_t capacity) {
  Result<PrivateRing> ring = PrivateRing::Create(capacity, "change feed");
  if (!ring.ok()) return ring.status();
  return std::unique_ptr<ChangeFeed>(new ChangeFeed(std::move(ring).value(), capacity));
}

std::uint8_t* ChangeFeed::Claim(std::size_t size) {
  std::span<std::uint8_t> out;
  if (ring_.producer().TryClaim(size, &out) != ring::ClaimResult::kOk) {
    overflows_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  return out.data();
}

std::uint8_t* ChangeFeed::ClaimKeys(std::uint32_t holder, std::size_t count, std::uint8_t** ops) {
  std::uint8_t* p = Claim(KeysRecordBytes(count));
  if (!p) return nullptr;
  p = Put(Head(p, ChangeKind::kKeys, holder), static_cast<std::uint32_t>(count));
  *ops = p + count * 8;
  std::memset(*ops, 0, (count + 7) / 8);
  return p;
}

void ChangeFeed::Commit(std::size_t size) {
  ring_.producer().Commit(size, kChangeRecordType);
  records_.fetch_add(1, std::memory_order_relaxed);
}

bool ChangeFeed::HolderUp(std::uint32_t holder, std::int64_t worker_id, std::string_view instance_id,
                          std::string_view location, std::optional<std::string_view> peer_init_url) {
  const std::string_view peer = peer_init_url.value_or(std::string_view());
  // Longer texts cannot come from the protocol's limits; cut rather than fail.
  auto cut = [](std::string_view s) { return s.substr(0, kMaxText); };
  const std::size_t size = kRecordHeadBytes + 8 + 6 + cut(instance_id).size() + cut(location).size() + cut(peer).size();
  std::uint8_t* p = Claim(size);
  if (!p) return false;
  p = Head(p, ChangeKind::kHolderUp, holder);
  p = Put(p, worker_id);
  p = PutText(p, cut(instance_id));
  p = PutText(p, cut(location));
  PutText(p, cut(peer));
  Commit(size);
  return true;
}

bool ChangeFeed::HolderDown(std::uint32_t holder) {
  std::uint8_t* p = Claim(kRecordHeadBytes);
  if (!p) return false;
  Head(p, ChangeKind::kHolderDown, holder);
  Commit(kRecordHeadBytes);
  return true;
}

template <typename Entry>
bool ChangeFeed::KeyRecords(std::uint32_t holder, std::span<const Entry> entries) {
  bool all = true;
  do {  // an empty batch still makes one (empty) record
    const std::span<const Entry> part = entries.first(std::min(entries.size(), keys_per_record_));
    entries = entries.subspan(part.size());
    std::uint8_t* ops;
    std::uint8_t* p = ClaimKeys(holder, part.size(), &ops);
    if (!p) {
      all = false;
      continue;
    }
    for (std::size_t i = 0; i < part.size(); ++i) {
      if constexpr (std::is_same_v<Entry, protocol::KVOpEvent>) {
        p = Put(p, part[i].key.bits());
        ops[i / 8] |= static_cast<std::uint8_t>((part[i].op_type == protocol::OpType::kAdmit ? 0 : 1) << (i % 8));
      } else {  // a full-sync batch: admits
        p = Put(p, part[i].bits());
      }
    }
    Commit(KeysRecordBytes(part.size()));
  } while (!entries.empty());
  return all;
}

bool ChangeFeed::Keys(std::uint32_t holder, std::span<const protocol::KVOpEvent> ops) { return KeyRecords(holder, ops); }

bool ChangeFeed::Admits(std::uint32_t holder, std::span<const protocol::Int> keys) { return KeyRecords(holder, keys); }

bool ChangeFeed::Resync(bool forced) {
  std::uint8_t* p = Claim(kRecordHeadBytes + 1);
  if (!p) return false;
  *Head(p, ChangeKind::kResync, 0) = forced ? 1 : 0;
  Commit(kRecordHeadBytes + 1);
  return true;
}

bool ChangeFeed::ResyncEnd() {
  std::uint8_t* p = Claim(kRecordHeadBytes);
  if (!p) return false;
  Head(p, ChangeKind::kResyncEnd, 0);
  Commit(kRecordHeadBytes);
  return true;
}

bool ChangeFeed::DumpHasRoom(std::size_t keys) {
  return ring_.producer().HasRoom(capacity_ / 2 + KeysRecordBytes(keys) + 64);
}

bool ChangeFeed::DumpAdmits(std::uint32_t holder, std::span<const std::uint64_t> keys) {
  if (keys.size() > keys_per_record_ || !DumpHasRoom(keys.size())) return false;
  std::uint8_t* ops;
  std::uint8_t* p = ClaimKeys(holder, keys.size(), &ops);  // room was checked: a failure here is a real overflow
  if (!p) return false;
  std::memcpy(p, keys.data(), keys.size() * 8);  // little-endian hosts (the static_assert above); all admits
  Commit(KeysRecordBytes(keys.size()));
  return true;
}

bool ChangeFeed::Key(std::uint32_t holder, protocol::OpType op, std::uint64_t key) {
  std::uint8_t* ops;
  std::uint8_t* p = ClaimKeys(holder, 1, &ops);
  if (!p) return false;
  Put(p, key);
  *ops = op == protocol::OpType::kAdmit ? 0 : 1;
  Commit(KeysRecordBytes(1));
  return true;
}

}  // namespace kvring::feed

// ---- the remote feed (remote_feed.h) ----------------------------------------------

namespace kvring::feed {

Status DecodeRemoteRecord(std::span<const std::uint8_t> bytes, RemoteRecord* out) {
  Reader r{bytes};
  std::uint8_t node_len;
  if (!r.Get(&out->what) || !r.Get(&node_len) || node_len == 0 || node_len > kMaxNodeName ||
      bytes.size() - r.at < node_len)
    return Bad("remote record without its node");
  out->node = std::string_view(reinterpret_cast<const char*>(bytes.data() + r.at), node_len);
  r.at += node_len;
  if (out->what == kRemoteNodeGone) return r.at == bytes.size() ? Status::Ok() : Bad("node-gone record too long");
  if (out->what != kRemoteChange) return Bad("remote record of unknown kind");
  if (!r.Get(&out->epoch) || !r.Get(&out->seq)) return Bad("remote record truncated");
  out->change = bytes.subspan(r.at);
  return Status::Ok();
}

Result<std::unique_ptr<RemoteFeed>> RemoteFeed::Create(std::size_t capacity) {
  Result<PrivateRing> ring = PrivateRing::Create(capacity, "remote feed");
  if (!ring.ok()) return ring.status();
  const int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return Status(ErrorKind::kInternal, std::string("remote feed: eventfd: ") + std::strerror(errno));
  return std::unique_ptr<RemoteFeed>(new RemoteFeed(std::move(ring).value(), fd));
}

RemoteFeed::~RemoteFeed() { close(wake_fd_); }

void RemoteFeed::Publish() {
  // Publish()'s tail store is seq_cst; this seq_cst load pairs with the
  // controller's seq_cst store in PrepareToSleep (the doorbell's Dekker pair).
  if (ring_.producer().Publish() && consumer_sleeping_.load(std::memory_order_seq_cst)) {
    const std::uint64_t one = 1;
    // Non-blocking: a full counter (2^64 - 2 rings) still leaves the fd readable.
    [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof one);
  }
}

bool RemoteFeed::PrepareToSleep() {
  // seq_cst store, then HasData()'s seq_cst load of the published tail:
  // pairs with Publish() above.
  consumer_sleeping_.store(true, std::memory_order_seq_cst);
  return !ring_.consumer().HasData();
}

bool RemoteFeed::Push(std::string_view node, std::uint64_t epoch, std::uint64_t seq,
                      std::span<const std::uint8_t> change) {
  if (node.empty() || node.size() > kMaxNodeName) return false;
  const std::size_t size = 2 + node.size() + 16 + change.size();
  std::span<std::uint8_t> out;
  if (ring_.producer().TryClaim(size, &out) != ring::ClaimResult::kOk) return false;
  std::uint8_t* p = out.data();
  *p++ = kRemoteChange;
  *p++ = static_cast<std::uint8_t>(node.size());
  std::memcpy(p, node.data(), node.size());
  p = Put(Put(p + node.size(), epoch), seq);
  if (!change.empty()) std::memcpy(p, change.data(), change.size());
  ring_.producer().Commit(size, kChangeRecordType);
  return true;
}

bool RemoteFeed::Gone(std::string_view node) {
  if (node.empty() || node.size() > kMaxNodeName) return false;
  const std::size_t size = 2 + node.size();
  std::span<std::uint8_t> out;
  if (ring_.producer().TryClaim(size, &out) != ring::ClaimResult::kOk) return false;
  out[0] = kRemoteNodeGone;
  out[1] = static_cast<std::uint8_t>(node.size());
  std::memcpy(out.data() + 2, node.data(), node.size());
  ring_.producer().Commit(size, kChangeRecordType);
  return true;
}

}  // namespace kvring::feed
