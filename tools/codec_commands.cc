// `kvring decode`, `kvring encode`, `kvring chunk-hash`.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "commands.h"
#include "kvring/protocol/chunk_hash.h"
#include "kvring/protocol/codec.h"
#include "kvring/protocol/json.h"

namespace kvring::tools {
namespace {

using protocol::Json;

// Reads a whole file ("-" = stdin). Files are bounded by `max_bytes`: input
// larger than any acceptable message is refused before it is read into memory.
bool ReadInput(const std::string& path, std::size_t max_bytes, std::string* out, std::string* err) {
  std::FILE* f = path == "-" ? stdin : std::fopen(path.c_str(), "rb");
  if (!f) {
    *err = "cannot open: " + std::string(std::strerror(errno));
    return false;
  }
  out->clear();
  char buf[1 << 16];
  std::size_t n;
  bool too_big = false;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    if (out->size() + n > max_bytes) { too_big = true; break; }
    out->append(buf, n);
  }
  bool read_error = std::ferror(f);
  if (f != stdin) std::fclose(f);
  if (too_big) {
    *err = "input exceeds the limit of " + std::to_string(max_bytes) + " bytes (--max-bytes)";
    return false;
  }
  if (read_error) {
    *err = "read error";
    return false;
  }
  return true;
}

struct LimitFlags {
  protocol::DecodeLimits limits;
  void Add(CLI::App& app) {
    app.add_option("--max-bytes", limits.max_message_bytes, "Largest message accepted, in bytes")
        ->capture_default_str();
    app.add_option("--max-depth", limits.max_depth, "Deepest nesting accepted")
        ->check(CLI::Range(1u, protocol::kMaxDepthCap))
        ->capture_default_str();
    app.add_option("--max-elements", limits.max_container_len, "Most elements in one array or map")
        ->capture_default_str();
    app.add_option("--max-str", limits.max_str_len, "Longest str/bin accepted, in bytes")
        ->capture_default_str();
  }
};

// Decodes as msgspec's Decoder(Msg) does (a map tagged "command_type" is
// refused, as there), or with `as_command` as Decoder(AnyCommand) does.
Result<Json> DecodeToJson(const std::string& bytes, const protocol::DecodeLimits& limits, bool as_command) {
  auto span = std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  if (as_command) {
    auto cmd = protocol::DecodeCommand(span, limits);
    if (!cmd.ok()) return cmd.status();
    return protocol::ToJson(*cmd);
  }
  auto msg = protocol::Decode(span, limits);
  if (!msg.ok()) return msg.status();
  return protocol::ToJson(*msg);
}

Command AddDecodeImpl(CLI::App& app) {
  struct State {
    std::vector<std::string> files;
    LimitFlags limits;
    std::string as = "msg";
  };
  auto st = std::make_shared<State>();
  app.description(
      "Decode LMCache controller messages (msgpack, one message per file) and print each as one\n"
      "JSON object per line, shaped like msgspec.to_builtins. '-' or no file reads stdin.\n"
      "Exit 0 when every input decoded, 1 otherwise (errors go to stderr, one per file).");
  app.add_option("files", st->files, "Message files, or - for stdin");
  app.add_option("--as", st->as,
                 "msg: as msgspec's Decoder(Msg) (a heartbeat command is refused there); command: as a heartbeat "
                 "command (Decoder(AnyCommand), tagged \"command_type\")")
      ->check(CLI::IsMember({"msg", "command"}))
      ->capture_default_str();
  st->limits.Add(app);
  return [st]() {
    std::vector<std::string> files = st->files;
    if (files.empty()) files.push_back("-");
    int rc = 0;
    for (const auto& file : files) {
      std::string bytes, err;
      if (!ReadInput(file, st->limits.limits.max_message_bytes, &bytes, &err)) {
        std::cerr << "error: " << file << ": " << err << "\n";
        rc = 1;
        continue;
      }
      auto j = DecodeToJson(bytes, st->limits.limits, st->as == "command");
      if (!j.ok()) {
        std::cerr << "error: " << file << ": " << j.status().ToString() << "\n";
        rc = 1;
        continue;
      }
      std::cout << j->dump() << "\n";
    }
    std::cout.flush();
    return rc;
  };
}

Command AddEncodeImpl(CLI::App& app) {
  struct State {
    std::string input = "-";
    std::string output = "-";
  };
  auto st = std::make_shared<State>();
  app.description(
      "Encode JSON objects (one per line, the shape `kvring decode` prints) into msgspec's\n"
      "msgpack bytes, written back to back. Objects with \"command_type\" and no \"type\" are\n"
      "heartbeat commands.");
  app.add_option("input", st->input, "JSON lines file, or - for stdin")->capture_default_str();
  app.add_option("-o,--output", st->output, "Output file, or - for stdout")->capture_default_str();
  return [st]() {
    std::string text, err;
    if (!ReadInput(st->input, std::size_t{1} << 30, &text, &err)) {
      std::cerr << "error: " << st->input << ": " << err << "\n";
      return 1;
    }
    std::string out;
    int rc = 0;
    std::size_t line_no = 0, start = 0;
    while (start < text.size()) {
      std::size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      std::string_view line(text.data() + start, end - start);
      start = end + 1;
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      auto where = st->input + ":" + std::to_string(line_no);
      auto j = protocol::ParseJson(line);
      if (!j.ok()) {
        std::cerr << "error: " << where << ": " << j.status().ToString() << "\n";
        rc = 1;
        continue;
      }
      if (j->is_object() && !j->contains("type") && j->contains("command_type")) {
        auto c = protocol::CommandFromJson(*j);
        if (!c.ok()) {
          std::cerr << "error: " << where << ": " << c.status().ToString() << "\n";
          rc = 1;
          continue;
        }
        protocol::EncodeCommand(*c, &out);
        continue;
      }
      auto m = protocol::MessageFromJson(*j);
      if (!m.ok()) {
        std::cerr << "error: " << where << ": " << m.status().ToString() << "\n";
        rc = 1;
        continue;
      }
      protocol::Encode(*m, &out);
    }
    if (st->output == "-") {
      std::fwrite(out.data(), 1, out.size(), stdout);
      std::fflush(stdout);
    } else {
      std::ofstream f(st->output, std::ios::binary);
      f.write(out.data(), static_cast<std::streamsize>(out.size()));
      if (!f) {
        std::cerr << "error: " << st->output << ": write failed\n";
        return 1;
      }
    }
    return rc;
  };
}

Command AddChunkHashImpl(CLI::App& app) {
  struct State {
    std::uint32_t chunk_size = 256;
    std::string none_hash;
    std::string none_hash_of_str;
    std::string none_hash_of_bytes;
    std::optional<std::uint32_t> seed;
    std::string input = "-";
  };
  auto st = std::make_shared<State>();
  app.description(
      "Read a JSON array of token ids and print [[start, end, hash], ...]: LMCache's chunk\n"
      "hashes with CPython's builtin hash, h[i] = hash((h[i-1], tuple(chunk_i))), h[-1] =\n"
      "NONE_HASH. Matches CPython >= 3.11 run with the same PYTHONHASHSEED.");
  app.add_option("--chunk-size", st->chunk_size, "Tokens per chunk")
      ->check(CLI::Range(1u, 1u << 30))
      ->capture_default_str();
  auto* g = app.add_option_group("NONE_HASH", "How NONE_HASH was made (default: the int 0)");
  g->add_option("--none-hash", st->none_hash, "NONE_HASH as an int (any size)");
  g->add_option("--none-hash-of-str", st->none_hash_of_str, "NONE_HASH = hash(S)");
  g->add_option("--none-hash-of-bytes", st->none_hash_of_bytes, "NONE_HASH = hash(bytes.fromhex(HEX))");
  g->require_option(0, 1);
  app.add_option("--python-hash-seed", st->seed,
                 "PYTHONHASHSEED (0..4294967295); defaults to $PYTHONHASHSEED, needed for str/bytes");
  app.add_option("input", st->input, "JSON file with the tokens, or - for stdin")->capture_default_str();

  return [st]() -> int {
    std::optional<std::uint32_t> seed = st->seed;
    if (!seed) {
      if (const char* env = std::getenv("PYTHONHASHSEED"); env && *env && std::string(env) != "random") {
        char* end = nullptr;
        unsigned long v = std::strtoul(env, &end, 10);
        if (*end != '\0' || v > 0xffffffffUL) {
          std::cerr << "error: PYTHONHASHSEED must be 'random' or an integer in [0, 4294967295]\n";
          return 2;
        }
        seed = static_cast<std::uint32_t>(v);
      }
    }
    bool needs_seed = !st->none_hash_of_str.empty() || !st->none_hash_of_bytes.empty();
    if (needs_seed && !seed) {
      std::cerr << "error: hashing a str or bytes NONE_HASH needs --python-hash-seed (or PYTHONHASHSEED)\n";
      return 2;
    }
    pyhash::SipKey key = pyhash::KeyFromSeed(seed.value_or(0));
    std::int64_t none_item_hash = 0;
    if (!st->none_hash.empty()) {
      auto h = pyhash::HashDecimal(st->none_hash);
      if (!h.ok()) {
        std::cerr << "error: --none-hash: " << h.status().message() << "\n";
        return 2;
      }
      none_item_hash = *h;
    } else if (!st->none_hash_of_str.empty()) {
      auto h = pyhash::HashStr(st->none_hash_of_str, key);
      if (!h.ok()) {
        std::cerr << "error: --none-hash-of-str: " << h.status().message() << "\n";
        return 2;
      }
      none_item_hash = pyhash::HashInt(*h);
    } else if (!st->none_hash_of_bytes.empty()) {
      const std::string& hex = st->none_hash_of_bytes;
      std::string bytes;
      if (hex.size() % 2 != 0 || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
        std::cerr << "error: --none-hash-of-bytes: expected an even number of hex digits\n";
        return 2;
      }
      for (std::size_t i = 0; i < hex.size(); i += 2)
        bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
      none_item_hash = pyhash::HashInt(pyhash::HashBytes(bytes, key));
    }

    std::string text, err;
    if (!ReadInput(st->input, std::size_t{1} << 30, &text, &err)) {
      std::cerr << "error: " << st->input << ": " << err << "\n";
      return 1;
    }
    auto j = protocol::ParseJson(text);
    if (!j.ok() || !j->is_array()) {
      std::cerr << "error: " << st->input << ": expected a JSON array of integers\n";
      return 1;
    }
    std::vector<std::int64_t> tokens;
    tokens.reserve(j->size());
    for (std::size_t i = 0; i < j->size(); ++i) {
      const Json& t = (*j)[i];
      if (!t.is_number_integer() || (t.is_number_unsigned() && t.get<std::uint64_t>() > INT64_MAX)) {
        std::cerr << "error: " << st->input << ": token " << i << " is not an integer in int64 range\n";
        return 1;
      }
      tokens.push_back(t.get<std::int64_t>());
    }
    ChunkHasher hasher(st->chunk_size, none_item_hash);
    Json out = Json::array();
    for (const ChunkHash& c : hasher.Hash(tokens)) out.push_back(Json::array({c.start, c.end, c.hash}));
    std::cout << out.dump() << "\n";
    return 0;
  };
}

}  // namespace

Command AddDecode(CLI::App& app) { return AddDecodeImpl(app); }
Command AddEncode(CLI::App& app) { return AddEncodeImpl(app); }
Command AddChunkHash(CLI::App& app) { return AddChunkHashImpl(app); }

}  // namespace kvring::tools
