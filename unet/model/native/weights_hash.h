// A 128-bit hash of an array's bytes, for conv3x3.cc to recognise weights it has transformed
// before without keeping a copy of them. Included by conv3x3.cc only.
//
// XXH3's accumulation (https://github.com/Cyan4973/xxHash): eight 64-bit lanes each add the word
// and a 32x32-bit product of the word with a key, here a key that changes with every 64-byte
// stripe (so moving a value to another place changes the hash), the lanes scrambled every 4 KiB;
// the 512-bit state is folded twice, with other constants, into two 64-bit halves. Not
// cryptographic: weights crafted to collide could be mistaken for each other. About as fast as
// memcmp (each byte read once: ~2.7 ms for the 38 MB of a 1024x1024 layer on one core).
#ifndef UNET_NATIVE_WEIGHTS_HASH_H_
#define UNET_NATIVE_WEIGHTS_HASH_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

namespace unet_native {

namespace hash_detail {

using Word = uint64_t __attribute__((may_alias));  // read floats as 64-bit words
constexpr int kLanes = 8;
constexpr size_t kBlockWords = 8 * 64;  // 4 KiB between scrambles
constexpr uint64_t kKeys[2][kLanes] = {
    {0xbe4ba423396cfeb8ull, 0x1cad21f72c81017cull, 0xdb979083e96dd4deull, 0x1f67b3b7a4a44072ull,
     0x78e5c0cc4ee679cbull, 0x2172ffcc7dd05a82ull, 0x8e2443f7744608b8ull, 0x4c263a81e69035e0ull},
    {0xcb00c391bb52283cull, 0xa32e531b8b65d088ull, 0x4ef90da297486471ull, 0xd8acdea946ef1938ull,
     0x3f349ce33f76faa8ull, 0x1d4f0bc7c7bbdcf9ull, 0x3159b4cd4be0518aull, 0x647378d9c97e9fc8ull}};

inline uint64_t mix(uint64_t h) {  // MurmurHash3's finalizer
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 33);
}

// Adds `words` words (a multiple of kLanes) to `acc`. Cloned for AVX-512 where the CPU has it.
__attribute__((target_clones("avx512f", "default")))
inline void accumulate(const Word* data, size_t words, uint64_t* acc) {
  uint64_t key[kLanes];
  for (int l = 0; l < kLanes; ++l) key[l] = kKeys[0][l];
  for (size_t i = 0; i < words;) {
    const size_t end = words - i < kBlockWords ? words : i + kBlockWords;
    for (; i < end; i += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const uint64_t v = data[i + l], k = v ^ key[l];
        acc[l ^ 1] += v;
        acc[l] += (k & 0xffffffffull) * (k >> 32);
        key[l] += 0x9e3779b97f4a7c15ull;
      }
    for (int l = 0; l < kLanes; ++l)
      acc[l] = (acc[l] ^ (acc[l] >> 47) ^ kKeys[1][l]) * 0x9e3779b1ull;
  }
}

}  // namespace hash_detail

// The hash of `bytes` bytes at `data`, as two 64-bit halves.
inline std::pair<uint64_t, uint64_t> hash128(const void* data, size_t bytes) {
  using namespace hash_detail;
  const auto* words = static_cast<const Word*>(data);
  const size_t stripes = bytes / (sizeof(uint64_t) * kLanes) * kLanes;
  uint64_t acc[kLanes];
  for (int l = 0; l < kLanes; ++l) acc[l] = kKeys[1][(l + 3) % kLanes] ^ bytes;
  accumulate(words, stripes, acc);
  const char* tail = static_cast<const char*>(data) + stripes * sizeof(uint64_t);
  for (size_t i = 0; i < bytes - stripes * sizeof(uint64_t); ++i)   // fewer than 64 bytes
    acc[i % kLanes] = mix(acc[i % kLanes] ^ (uint64_t(uint8_t(tail[i])) << (8 * (i / kLanes))));
  uint64_t a = mix(bytes ^ kKeys[0][0]), b = mix(bytes ^ kKeys[1][0]);
  for (int l = 0; l < kLanes; ++l) {
    a = mix(a ^ acc[l]);
    b = mix(b + (acc[kLanes - 1 - l] ^ kKeys[0][l]));
  }
  return {a, b};
}

}  // namespace unet_native

#endif  // UNET_NATIVE_WEIGHTS_HASH_H_
