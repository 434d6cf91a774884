// fp16 conversion: bit exact with numpy/torch (values below checked with Python's struct 'e', which rounds
// to nearest, ties to even).
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include <catch2/catch.hpp>

#include "src/quant/fp16.h"

using namespace ptool::quant;

TEST_CASE("fp16: known values round to nearest even", "[quant]") {
  struct Case {
    float in;
    uint16_t bits;
  };
  const Case cases[] = {
      {1.0f, 0x3c00},          {-2.0f, 0xc000},        {65504.0f, 0x7bff},
      {65519.988f, 0x7bff},    // just below the overflow threshold 65520
      {0.1f, 0x2e66},          {1.0f / 3.0f, 0x3555},  {3.14159f, 0x4248},
      {2049.0f, 0x6800},       // tie between 2048 (even) and 2050 -> 2048
      {2051.0f, 0x6802},       // tie between 2050 and 2052 (even) -> 2052
      {0x1p-14f, 0x0400},      // smallest normal
      {0x1p-24f, 0x0001},      // smallest subnormal
      {0x1p-25f, 0x0000},      // tie between 0 and 2^-24 -> 0 (even)
      {0x1.8p-25f, 0x0001},    // 1.5 * 2^-25 rounds up
      {0x1.8p-24f, 0x0002},    // 1.5 * 2^-24: tie between 1 and 2 units -> 2 (even)
      {0x1p-14f - 0x1p-25f, 0x0400},  // 1023.5 subnormal units: tie -> 1024 = smallest normal
      {1e-5f, 0x00a8},         {-0.0f, 0x8000},        {1e-9f, 0x0000},
      {0.007874015718698502f, 0x2008},  // the baseline's 1/127 scale
  };
  for (const Case& c : cases) {
    INFO("input " << c.in);
    CHECK(float_to_half(c.in) == c.bits);
  }
  CHECK(float_to_half(65520.0f) == 0x7c00);
  CHECK(float_to_half(-1e6f) == 0xfc00);
  CHECK(float_to_half(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(float_to_half(std::numeric_limits<float>::quiet_NaN()) == 0x7e00);
  CHECK(half_to_float(0x2e66) == 0.0999755859375f);
  CHECK(half_to_float(0x0001) == 0x1p-24f);
  CHECK(half_to_float(0x03ff) == 1023 * 0x1p-24f);
  CHECK(half_to_float(0x7bff) == 65504.0f);
  CHECK(std::isinf(half_to_float(0xfc00)));
  CHECK(std::isnan(half_to_float(0x7e00)));
  CHECK(round_to_half(0.1f) == 0.0999755859375f);
}

TEST_CASE("fp16: every half survives half -> float -> half", "[quant]") {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t b = static_cast<uint16_t>(h);
    if ((b & 0x7c00) == 0x7c00 && (b & 0x3ff)) continue;  // NaN payloads are canonicalised
    REQUIRE(float_to_half(half_to_float(b)) == b);
  }
}

TEST_CASE("fp16: conversion is the nearest half, ties to even (1M floats)", "[quant]") {
  uint64_t state = 12345;
  auto next = [&] {
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  for (int i = 0; i < 1000000; ++i) {
    // Exponents spread over the half range (2^-26 .. 2^16) plus random mantissas.
    const uint32_t exp = 101 + static_cast<uint32_t>(next() % 42);
    const uint32_t bits = (static_cast<uint32_t>(next()) & 0x807fffffu) | (exp << 23);
    const float x = std::bit_cast<float>(bits);
    const uint16_t h = float_to_half(x);
    const double ax = std::fabs(static_cast<double>(x));
    if (ax >= 65520.0) {
      REQUIRE((h & 0x7fff) == 0x7c00);
      continue;
    }
    const uint16_t mag = h & 0x7fff;
    REQUIRE(mag < 0x7c00);
    const double v = half_to_float(mag);
    const double err = std::fabs(ax - v);
    const double up = half_to_float(static_cast<uint16_t>(mag + 1));
    REQUIRE(err <= std::fabs(up - ax));
    if (mag > 0) {
      const double down = half_to_float(static_cast<uint16_t>(mag - 1));
      REQUIRE(err <= std::fabs(ax - down));
      if (err == std::fabs(ax - down)) REQUIRE((mag & 1) == 0);
    }
    if (err == std::fabs(up - ax)) REQUIRE((mag & 1) == 0);
    REQUIRE((h & 0x8000) == ((bits >> 16) & 0x8000));
  }
}
