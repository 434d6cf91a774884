// ptool's own entropy codec for quantized weight codes: one int8 code per weight of a 2-D tensor
// (rows x cols, row-major), values typically in [-31, 31] (int6) or [-127, 127] (int8).
//
// Model: each code is binarised (zero flag, sign, magnitude in unary with a per-tensor Golomb shift
// for wide codes, rare large values in Elias-gamma) and every binary decision is coded by an
// adaptive binary arithmetic coder. The context of a decision describes the expected magnitude at
// (r, c): a running mean of |q| in column c over the rows above and a running mean of |q| in row r
// so far (column-scale and row-scale/shape differences are what a per-row-quantized matrix keeps).
// Mode 0 codes with that one context; mode 1 mixes it (logistic mixing) with an order-0 model, a
// model of the neighbouring magnitudes |q[r][c-1]|, |q[r][c-2]|, |q[r-1][c-1..c+1]| and a model of
// the product estimate. By default the encoder tries both and keeps the smaller stream.
// The format is described in entropy_codec.cpp.
//
// The stream is self-describing (magic, version, shape, parameters, a checksum of the codes) and
// exactly lossless for every int8 input. decode_codes() is hardened: a corrupt, truncated or foreign
// stream, or one whose shape differs from the expected one, throws ptool::Error; it never reads out of
// bounds, allocates at most expected_rows*expected_cols bytes (plus model tables of fixed size) and
// always terminates.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace ptool {

struct EntropyCodecOptions {
  // -1: encode with both models and keep the smaller stream (about 3x the encode time);
  //  0: the fast single-context model; 1: the four-model mix (about 2x slower to decode).
  int mode = -1;
};

std::vector<uint8_t> encode_codes(std::span<const int8_t> codes, int64_t rows, int64_t cols,
                                  const EntropyCodecOptions& opt = {});

std::vector<int8_t> decode_codes(std::span<const uint8_t> stream, int64_t expected_rows, int64_t expected_cols);

struct CodesStreamInfo {
  int64_t rows = 0;
  int64_t cols = 0;
  size_t header_bytes = 0;  // bytes before the arithmetic-coded payload
  size_t payload_bytes = 0;
  int mode = 0;  // model mode (see EntropyCodecOptions)
};

// Parses and validates the header only (no decoding); throws Error on a malformed header.
CodesStreamInfo peek_codes_stream(std::span<const uint8_t> stream);

}  // namespace ptool
