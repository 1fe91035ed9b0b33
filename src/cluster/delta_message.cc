#include "kvring/cluster/delta_message.h"

#include <charconv>
#include <cstdio>

#include <cstring>
#include <vector>

namespace kvring::cluster {
namespace {

template <typename T>
void Append(std::string* b, T v) {
  b->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

template <typename T>
T Load(const std::uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

void DeltaWriter::Begin(std::uint64_t epoch, std::uint64_t first_seq) {
  buf_.clear();
  records_ = 0;
  Append(&buf_, kDeltaMagic);
  Append(&buf_, std::uint32_t{0});
  Append(&buf_, epoch);
  Append(&buf_, first_seq);
}

void DeltaWriter::Add(std::span<const std::uint8_t> record) {
  Append(&buf_, static_cast<std::uint32_t>(record.size()));
  buf_.append(reinterpret_cast<const char*>(record.data()), record.size());
  ++records_;
}

std::span<const std::uint8_t> DeltaWriter::Finish() {
  std::memcpy(buf_.data() + 4, &records_, 4);
  return {reinterpret_cast<const std::uint8_t*>(buf_.data()), buf_.size()};
}

Status DecodeDeltaMessage(std::span<const std::uint8_t> bytes, DeltaHeader* header, const OnRecord& on_record) {
  auto bad = [](const std::string& why) { return Status(ErrorKind::kProtocol, "delta message: " + why); };
  if (bytes.size() < kDeltaHeaderBytes) return bad("shorter than its header");
  if (Load<std::uint32_t>(bytes.data()) != kDeltaMagic) return bad("wrong magic");
  header->records = Load<std::uint32_t>(bytes.data() + 4);
  header->epoch = Load<std::uint64_t>(bytes.data() + 8);
  header->first_seq = Load<std::uint64_t>(bytes.data() + 16);
  if (header->epoch == 0) return bad("epoch 0");
  if (header->first_seq == 0 || header->first_seq > UINT64_MAX - header->records) return bad("sequence out of range");
  // Each record takes at least its length word and a record head: a count
  // the bytes cannot hold is refused before anything is allocated for it.
  const std::size_t body = bytes.size() - kDeltaHeaderBytes;
  if (header->records > body / (4 + feed::kRecordHeadBytes))
    return bad(std::to_string(header->records) + " records cannot fit in " + std::to_string(body) + " bytes");
  std::vector<feed::Change> changes(header->records);
  std::vector<std::span<const std::uint8_t>> raw(header->records);
  std::size_t at = kDeltaHeaderBytes;
  for (std::uint32_t i = 0; i < header->records; ++i) {
    if (bytes.size() - at < 4) return bad("record " + std::to_string(i) + " truncated");
    const std::uint32_t n = Load<std::uint32_t>(bytes.data() + at);
    at += 4;
    if (bytes.size() - at < n) return bad("record " + std::to_string(i) + " longer than the message");
    raw[i] = bytes.subspan(at, n);
    if (Status s = feed::DecodeChange(raw[i], &changes[i]); !s.ok())
      return bad("record " + std::to_string(i) + ": " + s.message());
    at += n;
  }
  if (at != bytes.size()) return bad(std::to_string(bytes.size() - at) + " bytes after the last record");
  for (std::uint32_t i = 0; i < header->records; ++i) on_record(changes[i], raw[i]);
  return Status::Ok();
}

std::string EncodeLease(const LeaseValue& lease) {
  char text[64];
  std::snprintf(text, sizeof text, "0x%016llx %llu", static_cast<unsigned long long>(lease.epoch),
                static_cast<unsigned long long>(lease.rebuild_from_seq));
  return text;
}

bool DecodeLease(std::string_view text, LeaseValue* out) {
  constexpr std::size_t kEpochEnd = 2 + 16;
  if (text.size() < kEpochEnd + 2 || text.substr(0, 2) != "0x" || text[kEpochEnd] != ' ') return false;
  LeaseValue v;
  // One spelling per value (as EncodeLease writes it): lower-case hex digits,
  // a decimal without leading zeros.
  for (char c : text.substr(2, 16))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  const char* epoch_begin = text.data() + 2;
  auto e = std::from_chars(epoch_begin, text.data() + kEpochEnd, v.epoch, 16);
  if (e.ec != std::errc() || e.ptr != text.data() + kEpochEnd) return false;
  const char* seq_begin = text.data() + kEpochEnd + 1;
  if (*seq_begin < '0' || *seq_begin > '9') return false;  // from_chars takes no sign, but be plain
  if (*seq_begin == '0' && text.size() > kEpochEnd + 2) return false;
  auto d = std::from_chars(seq_begin, text.data() + text.size(), v.rebuild_from_seq, 10);
  if (d.ec != std::errc() || d.ptr != text.data() + text.size()) return false;
  *out = v;
  return true;
}

}  // namespace kvring::cluster
