// A tiny deterministic RNG for initialisation and anything random in training, with a state that can be
// saved in a checkpoint and restored for bit-exact resume.
//
// Generator: xoshiro256** (Blackman & Vigna, 2018), 256-bit state, period 2^256 - 1.
// Seeding:   Rng(seed, stream) fills the four state words with four successive outputs of splitmix64
//            started at x0 = seed ^ splitmix64_mix(stream). stream = 0 gives the plain "seed only"
//            sequence; a different stream (e.g. Rng::hash_name("blocks.0.attn.c_q.weight")) gives an
//            independent sequence per tensor, so init does not depend on the order tensors are visited.
// Derived values (all documented so that another implementation can reproduce them):
//   uniform()   = (next_u64() >> 11) * 2^-53                       in [0, 1)
//   uniform_f() = (next_u64() >> 40) * 2^-24                       in [0, 1) as float
//   normal()    = Box-Muller on two uniforms: u1 = 1 - uniform(), u2 = uniform(),
//                 sqrt(-2 ln u1) * cos(2 pi u2); the sine half is discarded so the state stays 4 words.
//   below(n)    = Lemire's unbiased multiply-shift rejection on next_u64().
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>

namespace ptool::train {

// One splitmix64 step: advances *x by the golden gamma and returns the mixed value.
inline uint64_t splitmix64(uint64_t* x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The splitmix64 finaliser applied to one value (stateless).
inline uint64_t splitmix64_mix(uint64_t v) {
  uint64_t x = v;
  return splitmix64(&x);
}

class Rng {
 public:
  struct State {
    std::array<uint64_t, 4> s{};
    bool operator==(const State&) const = default;
  };

  explicit Rng(uint64_t seed = 0, uint64_t stream = 0) { reseed(seed, stream); }

  void reseed(uint64_t seed, uint64_t stream = 0) {
    uint64_t x = seed ^ splitmix64_mix(stream);
    for (auto& w : st_.s) w = splitmix64(&x);
    // splitmix64 never yields four zero words in a row, but keep the invariant explicit.
    if (st_.s[0] == 0 && st_.s[1] == 0 && st_.s[2] == 0 && st_.s[3] == 0) st_.s[0] = 1;
  }

  // Sets the raw xoshiro state (e.g. for reference test vectors). An all-zero state is invalid.
  static Rng from_state(const State& st) {
    Rng r;
    r.st_ = st;
    return r;
  }

  State state() const { return st_; }
  void restore(const State& st) { st_ = st; }

  uint64_t next_u64() {
    auto& s = st_.s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }
  uint32_t next_u32() { return static_cast<uint32_t>(next_u64() >> 32); }

  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  float uniform_f() { return static_cast<float>(next_u64() >> 40) * 0x1.0p-24f; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925286766559 * u2);
  }
  double normal(double mean, double stddev) { return mean + stddev * normal(); }

  // Uniform integer in [0, n); n must be > 0 (returns 0 for n == 0).
  uint64_t below(uint64_t n) {
    if (n == 0) return 0;
    unsigned __int128 m = static_cast<unsigned __int128>(next_u64()) * n;
    uint64_t lo = static_cast<uint64_t>(m);
    if (lo < n) {
      const uint64_t threshold = (0 - n) % n;
      while (lo < threshold) {
        m = static_cast<unsigned __int128>(next_u64()) * n;
        lo = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }

  void fill_normal(std::span<float> out, double mean, double stddev) {
    for (float& v : out) v = static_cast<float>(normal(mean, stddev));
  }
  void fill_uniform(std::span<float> out, double lo, double hi) {
    for (float& v : out) v = static_cast<float>(uniform(lo, hi));
  }

  // FNV-1a 64 of a name: a stable stream id for per-tensor generators.
  static uint64_t hash_name(std::string_view name) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (unsigned char c : name) {
      h ^= c;
      h *= 0x100000001B3ull;
    }
    return h;
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  State st_;
};

}  // namespace ptool::train
