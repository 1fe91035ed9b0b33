// msgpack format bytes, shared by the reader and the writer (the way
// LevelDB's log_format.h serves its log reader and writer).
// Spec: https://github.com/msgpack/msgpack/blob/master/spec.md
#pragma once

#include <cstdint>

namespace kvring::protocol::msgpack_format {

// Single-byte families: value in the low bits.
inline constexpr std::uint8_t kPosFixintMax = 0x7f;    // 0xxxxxxx
inline constexpr std::uint8_t kFixmap = 0x80;          // 1000xxxx
inline constexpr std::uint8_t kFixarray = 0x90;        // 1001xxxx
inline constexpr std::uint8_t kFixstr = 0xa0;          // 101xxxxx
inline constexpr std::uint8_t kNegFixintMin = 0xe0;    // 111xxxxx

inline constexpr std::uint8_t kNil = 0xc0;
inline constexpr std::uint8_t kNeverUsed = 0xc1;
inline constexpr std::uint8_t kFalse = 0xc2;
inline constexpr std::uint8_t kTrue = 0xc3;
inline constexpr std::uint8_t kBin8 = 0xc4;
inline constexpr std::uint8_t kBin16 = 0xc5;
inline constexpr std::uint8_t kBin32 = 0xc6;
inline constexpr std::uint8_t kExt8 = 0xc7;
inline constexpr std::uint8_t kExt16 = 0xc8;
inline constexpr std::uint8_t kExt32 = 0xc9;
inline constexpr std::uint8_t kFloat32 = 0xca;
inline constexpr std::uint8_t kFloat64 = 0xcb;
inline constexpr std::uint8_t kUint8 = 0xcc;
inline constexpr std::uint8_t kUint16 = 0xcd;
inline constexpr std::uint8_t kUint32 = 0xce;
inline constexpr std::uint8_t kUint64 = 0xcf;
inline constexpr std::uint8_t kInt8 = 0xd0;
inline constexpr std::uint8_t kInt16 = 0xd1;
inline constexpr std::uint8_t kInt32 = 0xd2;
inline constexpr std::uint8_t kInt64 = 0xd3;
inline constexpr std::uint8_t kFixext1 = 0xd4;
inline constexpr std::uint8_t kFixext2 = 0xd5;
inline constexpr std::uint8_t kFixext4 = 0xd6;
inline constexpr std::uint8_t kFixext8 = 0xd7;
inline constexpr std::uint8_t kFixext16 = 0xd8;
inline constexpr std::uint8_t kStr8 = 0xd9;
inline constexpr std::uint8_t kStr16 = 0xda;
inline constexpr std::uint8_t kStr32 = 0xdb;
inline constexpr std::uint8_t kArray16 = 0xdc;
inline constexpr std::uint8_t kArray32 = 0xdd;
inline constexpr std::uint8_t kMap16 = 0xde;
inline constexpr std::uint8_t kMap32 = 0xdf;

inline constexpr std::uint32_t kFixmapMaxLen = 15;
inline constexpr std::uint32_t kFixarrayMaxLen = 15;
inline constexpr std::uint32_t kFixstrMaxLen = 31;

}  // namespace kvring::protocol::msgpack_format
