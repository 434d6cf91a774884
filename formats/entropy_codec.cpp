// Context-mixing arithmetic coder for 2-D int8 code tensors. See entropy_codec.h.
//
// Stream layout (all integers unsigned LEB128 varints unless noted):
//   "PEC" 0x01          magic and format version
//   rows, cols          shape (each <= 2^40, rows*cols <= 2^40)
//   if rows*cols > 0:
//     mean16            round(16 * mean |q|), 1..2048: scale prior for the context buckets
//     shift             1 byte, 0..4: Golomb shift of the magnitude binarisation
//     mode              1 byte: 0 = single-context model, 1 = four-model logistic mix
//     checksum          4 bytes little-endian: low 32 bits of XXH3-64 of the codes
//     payload           binary arithmetic code (carry-less 32-bit coder, 4 flush bytes), to the end
//
// Binarisation of one code q (m = |q|):  [m != 0]  then, if m > 0, the sign (p = 1/2), then
// v = m - 1 split as high = v >> shift, low = v & (2^shift - 1): high in unary (up to kUnary
// steps, then an Elias-gamma escape), low bits MSB first under the context (min(high,3), prefix).
// Each modelled decision has a slot (0: zero flag, 1..24: unary steps, 25..32: escape length,
// 64..127: low bits) and is coded with the probability of the model(s) below for that slot.
#include "formats/entropy_codec.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <string>

#include <xxhash.h>

#include "formats/error.h"

namespace ptool {

namespace {

constexpr uint8_t kMagic[4] = {'P', 'E', 'C', 0x01};
constexpr int64_t kMaxDim = int64_t{1} << 40;
constexpr int kMaxShift = 4;
constexpr int kUnary = 24;               // unary steps before the escape
constexpr int kSlotEscape = 1 + kUnary;  // 8 slots for the gamma length
constexpr int kSlotLow = 64;             // 64 slots: min(high,3)*16 + prefix node
constexpr int kSlots = 128;
constexpr uint32_t kCounterLimit = 1023;
constexpr int kMixRate = 2;
constexpr int kMaxWeight = 1 << 24;  // mixer weights are 16.16 fixed point; the clamp keeps them bounded

[[noreturn]] void corrupt(const std::string& what) { throw Error("entropy-coded codes: " + what); }

// ---------------------------------------------------------------------------------------------------
// Integer-only tables, so that encoder and decoder agree bit for bit on every platform (no libm).
// stretch(p) = ln(p/(1-p)) and squash = its inverse, with 12-bit probabilities and a stretch domain
// scaled by 256 and clamped to [-2047, 2047] (squash interpolated from 33 points, as in lpaq1).
int squash(int d) {
  static constexpr int t[33] = {1,    2,    3,    6,    10,   16,   27,   45,   73,   120,  194,
                                310,  488,  747,  1101, 1546, 2047, 2549, 2994, 3348, 3607, 3785,
                                3901, 3975, 4024, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094};
  if (d > 2047) return 4095;
  if (d < -2047) return 1;
  const int w = d & 127;
  const int i = (d >> 7) + 16;
  return (t[i] * (128 - w) + t[i + 1] * w + 64) >> 7;
}

struct Tables {
  std::array<int16_t, 4096> stretch;
  std::array<int32_t, 1024> rec;  // 65536 / (n + 1.5): the rates of the adaptive counters
  Tables() {
    int pi = 0;
    for (int x = -2047; x <= 2047; ++x) {  // invert squash()
      const int v = squash(x);
      for (int j = pi; j <= v; ++j) stretch[j] = static_cast<int16_t>(x);
      pi = v + 1;
    }
    for (int j = pi; j < 4096; ++j) stretch[j] = 2047;
    for (int n = 0; n < 1024; ++n) rec[n] = (2 * 65536) / (2 * n + 3);
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

// round(65536 * 2^(j/8)) for j = -24..24.
constexpr int64_t kPow2Eighths[49] = {8192,   8933,   9742,   10624,  11585,  12634,  13777,  15024,  16384,  17867,
                                      19484,  21247,  23170,  25268,  27554,  30048,  32768,  35734,  38968,  42495,
                                      46341,  50535,  55109,  60097,  65536,  71468,  77936,  84990,  92682,  101070,
                                      110218, 120194, 131072, 142935, 155872, 169979, 185364, 202141, 220436, 240387,
                                      262144, 285870, 311744, 339959, 370728, 404281, 440872, 480774, 524288};

// ---------------------------------------------------------------------------------------------------
// Carry-less binary arithmetic coder (after Matt Mahoney's lpaq1); p = P(bit == 1) in 1/4096.
class ArithEncoder {
 public:
  explicit ArithEncoder(std::vector<uint8_t>& out) : out_(out) {}
  int code(int bit, uint32_t p) {
    const uint32_t xmid = x1_ + static_cast<uint32_t>((static_cast<uint64_t>(x2_ - x1_) * p) >> 12);
    if (bit)
      x2_ = xmid;
    else
      x1_ = xmid + 1;
    while (((x1_ ^ x2_) & 0xff000000u) == 0) {
      out_.push_back(static_cast<uint8_t>(x2_ >> 24));
      x1_ <<= 8;
      x2_ = (x2_ << 8) | 255;
    }
    return bit;
  }
  void flush() {
    for (int i = 0; i < 4; ++i) {
      out_.push_back(static_cast<uint8_t>(x1_ >> 24));
      x1_ <<= 8;
    }
  }
  static constexpr bool kDecoding = false;

 private:
  std::vector<uint8_t>& out_;
  uint32_t x1_ = 0, x2_ = 0xffffffffu;
};

class ArithDecoder {
 public:
  ArithDecoder(const uint8_t* p, const uint8_t* end) : p_(p), end_(end) {
    for (int i = 0; i < 4; ++i) x_ = (x_ << 8) | next();
  }
  int code(int /*bit*/, uint32_t p) {
    const uint32_t xmid = x1_ + static_cast<uint32_t>((static_cast<uint64_t>(x2_ - x1_) * p) >> 12);
    const int bit = x_ <= xmid;
    x1_ = bit ? x1_ : xmid + 1;  // branch-free: the bit is unpredictable
    x2_ = bit ? xmid : x2_;
    while (((x1_ ^ x2_) & 0xff000000u) == 0) {
      x1_ <<= 8;
      x2_ = (x2_ << 8) | 255;
      x_ = (x_ << 8) | next();
    }
    return bit;
  }
  // A valid stream ends exactly after the encoder's flush, which leaves x equal to x1: any change that
  // did not alter a decision would survive in x, so this also catches corruption the checksum cannot see.
  bool finished_cleanly() const { return p_ == end_ && x_ == x1_; }
  static constexpr bool kDecoding = true;

 private:
  uint32_t next() {
    if (p_ == end_) corrupt("payload is truncated");
    return *p_++;
  }
  const uint8_t* p_;
  const uint8_t* end_;
  uint32_t x1_ = 0, x2_ = 0xffffffffu, x_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// The model.
//
// Per-tensor state: a running mean of 16|q| per column over the rows above (rate 1/(r+9.5), floored
// at 1/1000.5) and per row over the codes to the left (rate 1/(c+2.5), floored at 1/61.5), and the
// magnitudes of the current and previous rows. Contexts are log-scale buckets of these values
// relative to the tensor's mean16, so the tables mean the same thing for int5, int6 and int8 codes.
//   model 0 (both modes): column bucket (4 per octave, +-3 octaves) x row bucket (1 per octave, +-2)
//   mode 1 adds: an order-0 model, a neighbour model (|left|, |above|, mean of |left2|, |above-left|,
//   |above-right|) and a model of the product estimate col*row/mean x the neighbour mean; the four
//   are mixed by a logistic mixer selected by the decision slot. Mode 0 codes with model 0 alone.

constexpr int kMaxX16 = 129 * 16;  // bucket tables cover 16*|q| up to 16*128

struct Buckets {
  std::array<uint8_t, kMaxX16> tab{};
  // Linear interpolation between bucket centres: the lower bucket (the upper one is lower + 1) and
  // the upper's weight in 1/16; x = 0 has lower = 0 and weight 0.
  std::array<uint8_t, kMaxX16> lower{};
  std::array<uint8_t, kMaxX16> weight{};
  int count = 0;
  // per_octave (1, 2 or 4) buckets per factor of two over ratios x/mean16 in 2^-octaves .. 2^octaves
  // (octaves <= 3); bucket 0 = exact zero. Boundaries at mean16 * 2^(k/per_octave - octaves).
  void init(int mean16, int per_octave, int octaves) {
    const int n = 2 * octaves * per_octave;
    const int step = 8 / per_octave;
    count = 2 + n;
    auto at = [&](int j) { return static_cast<int64_t>(mean16) * kPow2Eighths[j + 24]; };  // x*65536 units
    auto boundary = [&](int k) { return at(k * step - 8 * octaves); };                     // k = 1..n
    // Interpolation runs over buckets 1..n; the centre of bucket b is mean16 * 2^((b - 1/2)/per_octave - octaves).
    auto centre = [&](int b) { return at((2 * b - 1) * step / 2 - 8 * octaves); };
    tab[0] = lower[0] = weight[0] = 0;
    int b = 1, i = 1;  // both only grow with x
    for (int x = 1; x < kMaxX16; ++x) {
      const int64_t X = static_cast<int64_t>(x) << 16;
      while (b <= n && X >= boundary(b)) ++b;
      tab[x] = static_cast<uint8_t>(b);
      while (i + 1 <= n && X >= centre(i + 1)) ++i;
      int64_t w;
      if (i == n) {
        lower[x] = static_cast<uint8_t>(n - 1);
        w = 16;
      } else {
        lower[x] = static_cast<uint8_t>(i);
        const int64_t lo = centre(i), hi = centre(i + 1);
        w = X <= lo ? 0 : (16 * (X - lo) + (hi - lo) / 2) / (hi - lo);
      }
      weight[x] = static_cast<uint8_t>(std::clamp<int64_t>(w, 0, 16));
    }
  }
  int operator()(int x16) const { return tab[std::min(x16, kMaxX16 - 1)]; }
};

// An adaptive probability: 22-bit P(1) and a 10-bit count that sets the rate 1/(n + 1.5).
inline int counter_p12(uint32_t v) { return static_cast<int>(v >> 20); }
inline uint32_t counter_update(uint32_t v, int y, const Tables& T) {
  const uint32_t n = v & 1023;
  const int64_t p22 = v >> 10;
  const int64_t target = y ? (1 << 22) - 1 : 0;
  const int64_t np = p22 + (((target - p22) * T.rec[n]) >> 16);
  return static_cast<uint32_t>(np << 10) | (n < kCounterLimit ? n + 1 : kCounterLimit);
}

template <int kModels>
class Model {
 public:
  static constexpr int kInputs = kModels + 1;  // + bias

  Model(int64_t cols, int mean16, int shift) : cols_(cols), mean16_(mean16), shift_(shift) {
    b_col_.init(mean16, 4, 3);
    b_row_.init(mean16, 1, 2);
    b_nb_.init(mean16, 2, 2);
    b_est_.init(mean16, 4, 3);
    b_nb3_.init(mean16, 1, 2);
    const int sizes[4] = {b_col_.count * b_row_.count, 1, b_nb_.count * b_nb_.count * b_nb3_.count,
                          b_est_.count * b_nb3_.count};
    for (int i = 0; i < kModels; ++i) t_[i].assign(static_cast<size_t>(sizes[i]) * kSlots, 1u << 31);
    if (kModels > 1) {
      mix_.assign(static_cast<size_t>(kSlots) * kInputs, 0);
      for (int s = 0; s < kSlots; ++s) mix_[s * kInputs] = 65536;
    }
    const int prior_mag = std::clamp((mean16 + 8) / 16, 0, 128);
    prev_.assign(cols + 4, static_cast<uint8_t>(prior_mag));
    cur_.assign(cols + 4, static_cast<uint8_t>(prior_mag));
    col_.assign(cols, mean16 << 8);
  }

  // Codes one tensor in row-major order: reads `in` when encoding, writes `out` when decoding.
  template <class IO>
  void run(IO& io, const int8_t* in, int8_t* out, int64_t rows) {
    const Tables& T = tables();
    for (int64_t r = 0; r < rows; ++r) {
      const int col_rate = T.rec[std::min<int64_t>(r + 8, 999)];
      int row = mean16_ << 8;
      cur_[0] = cur_[1] = prev_[0];
      const int64_t base = r * cols_;
      for (int64_t c = 0; c < cols_; ++c) {
        const int colv = col_[c] >> 8, rowv = row >> 8;
        if constexpr (kModels == 1) {
          // Interpolate between the two column buckets around colv (both are updated).
          const int x = std::min(colv, kMaxX16 - 1);
          ctx_[0] = (b_col_.lower[x] * b_row_.count + b_row_(rowv)) * kSlots;
          ctx_upper_ = x == 0 ? ctx_[0] : ctx_[0] + b_row_.count * kSlots;
          w_upper_ = b_col_.weight[x];
        } else {
          ctx_[0] = (b_col_(colv) * b_row_.count + b_row_(rowv)) * kSlots;
        }
        if constexpr (kModels > 1) {
          const int l1 = cur_[c + 1], l2 = cur_[c];
          const int u = prev_[c + 2], ul = prev_[c + 1], ur = prev_[c + 3];
          const int nb3 = b_nb3_((16 * (l2 + ul + ur) + 1) / 3);
          const int est = static_cast<int>((static_cast<int64_t>(colv) * rowv) / mean16_);
          ctx_[1] = 0;
          ctx_[2] = ((b_nb_(16 * l1) * b_nb_.count + b_nb_(16 * u)) * b_nb3_.count + nb3) * kSlots;
          ctx_[3] = (b_est_(est) * b_nb3_.count + nb3) * kSlots;
        }
        int q;
        if constexpr (IO::kDecoding) {
          q = code_value(io, 0);
          out[base + c] = static_cast<int8_t>(q);
        } else {
          q = code_value(io, in[base + c]);
        }
        const int m = q < 0 ? -q : q;
        cur_[c + 2] = static_cast<uint8_t>(m);
        const int m16 = m << 12;  // 16*m with 8 fraction bits
        col_[c] += static_cast<int32_t>((static_cast<int64_t>(m16 - col_[c]) * col_rate) >> 16);
        row += static_cast<int32_t>((static_cast<int64_t>(m16 - row) * T.rec[std::min<int64_t>(c + 1, 60)]) >> 16);
      }
      cur_[cols_ + 2] = cur_[cols_ + 3] = cur_[cols_ + 1];
      std::swap(prev_, cur_);
    }
  }

 private:
  template <class IO>
  int bit(IO& io, int slot, int y) {
    const Tables& T = tables();
    if constexpr (kModels == 1) {
      uint32_t& lo = t_[0][ctx_[0] + slot];
      uint32_t& hi = t_[0][ctx_upper_ + slot];
      const int p = ((16 - w_upper_) * counter_p12(lo) + w_upper_ * counter_p12(hi)) >> 4;
      y = io.code(y, static_cast<uint32_t>(std::clamp(p, 1, 4095)));
      lo = counter_update(lo, y, T);
      if (&hi != &lo) hi = counter_update(hi, y, T);
      return y;
    } else {
      uint32_t* e[kModels];
      int x[kInputs];
      int* w = &mix_[slot * kInputs];
      int64_t dot = 0;
      for (int i = 0; i < kModels; ++i) {
        e[i] = &t_[i][ctx_[i] + slot];
        x[i] = T.stretch[counter_p12(*e[i])];
        dot += static_cast<int64_t>(w[i]) * x[i];
      }
      x[kModels] = 256;
      dot += static_cast<int64_t>(w[kModels]) * 256;
      const int d = static_cast<int>(std::clamp<int64_t>(dot >> 16, -2047, 2047));
      const int p = squash(d);
      y = io.code(y, static_cast<uint32_t>(p));
      const int err = ((y << 12) - p) * kMixRate;
      for (int i = 0; i < kInputs; ++i)
        w[i] = std::clamp(w[i] + ((x[i] * err + 0x2000) >> 14), -kMaxWeight, kMaxWeight);
      for (int i = 0; i < kModels; ++i) *e[i] = counter_update(*e[i], y, T);
      return y;
    }
  }

  template <class IO>
  int code_value(IO& io, int q) {
    constexpr bool dec = IO::kDecoding;
    const int m = q < 0 ? -q : q;
    if (!bit(io, 0, m != 0)) return 0;
    const int neg = io.code(q < 0, 2048);
    const int v = m - 1;
    int high = dec ? 0 : v >> shift_;
    int h = 0;
    while (h < kUnary && bit(io, 1 + h, high > h)) ++h;
    if (h == kUnary) {
      // Elias-gamma escape for e1 = high - kUnary + 1 >= 1: length in unary, then the bits below the top.
      const uint32_t e1 = dec ? 0 : static_cast<uint32_t>(high - kUnary + 1);
      const int nb = dec ? 0 : static_cast<int>(std::bit_width(e1));
      int j = 0;
      while (j < 8 && bit(io, kSlotEscape + j, nb - 1 > j)) ++j;
      if (j == 8) corrupt("magnitude escape is too long");
      uint32_t val = 1;
      for (int i = j - 1; i >= 0; --i) val = (val << 1) | static_cast<uint32_t>(io.code((e1 >> i) & 1, 2048));
      high = kUnary + static_cast<int>(val) - 1;
    } else {
      high = h;
    }
    int node = 1;
    const int low_ctx = kSlotLow + std::min(high, 3) * 16;
    for (int i = shift_ - 1; i >= 0; --i) node = (node << 1) | bit(io, low_ctx + node, (v >> i) & 1);
    const int mag = 1 + ((high << shift_) | (node - (1 << shift_)));
    if constexpr (dec) {
      if (mag > 128 || (mag == 128 && !neg)) corrupt("decoded value is out of the int8 range");
    }
    return neg ? -mag : mag;
  }

  int64_t cols_;
  int mean16_;
  int shift_;
  Buckets b_col_, b_row_, b_nb_, b_est_, b_nb3_;
  std::vector<uint32_t> t_[kModels];
  std::vector<int> mix_;
  int ctx_[4] = {};
  int ctx_upper_ = 0, w_upper_ = 0;  // mode 0: the upper column bucket and its weight (0..16)
  std::vector<uint8_t> prev_, cur_;  // |q| of the previous and current row, 2 padding cells left, 2 right
  std::vector<int32_t> col_;         // running mean of 16|q| per column, 8 fraction bits
};

// ---------------------------------------------------------------------------------------------------
void put_varint(std::vector<uint8_t>& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<uint8_t>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<uint8_t>(v));
}

uint64_t get_varint(std::span<const uint8_t> s, size_t& pos, const char* what) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= s.size()) corrupt(std::string("header is truncated (") + what + ")");
    const uint8_t b = s[pos++];
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  corrupt(std::string("header varint is too long (") + what + ")");
}

uint32_t checksum(const int8_t* p, size_t n) { return static_cast<uint32_t>(XXH3_64bits(p, n)); }

struct Header {
  CodesStreamInfo info;
  int mean16 = 0;
  int shift = 0;
  int mode = 0;
  uint32_t sum = 0;
};

Header parse_header(std::span<const uint8_t> s) {
  Header h;
  if (s.size() < 4 || std::memcmp(s.data(), kMagic, 3) != 0) corrupt("bad magic (not a ptool entropy-coded stream)");
  if (s[3] != kMagic[3]) corrupt("unsupported format version " + std::to_string(s[3]));
  size_t pos = 4;
  const uint64_t rows = get_varint(s, pos, "rows");
  const uint64_t cols = get_varint(s, pos, "cols");
  if (rows > static_cast<uint64_t>(kMaxDim) || cols > static_cast<uint64_t>(kMaxDim) ||
      (rows > 0 && cols > static_cast<uint64_t>(kMaxDim) / rows))
    corrupt("shape " + std::to_string(rows) + "x" + std::to_string(cols) + " is too large");
  h.info.rows = static_cast<int64_t>(rows);
  h.info.cols = static_cast<int64_t>(cols);
  if (rows * cols > 0) {
    const uint64_t mean16 = get_varint(s, pos, "mean");
    if (mean16 < 1 || mean16 > 2048) corrupt("scale prior " + std::to_string(mean16) + " is outside 1..2048");
    h.mean16 = static_cast<int>(mean16);
    if (s.size() - pos < 6) corrupt("header is truncated (shift, mode, checksum)");
    h.shift = s[pos++];
    if (h.shift > kMaxShift) corrupt("Golomb shift " + std::to_string(h.shift) + " is outside 0..4");
    h.mode = s[pos++];
    if (h.mode > 1) corrupt("unknown model mode " + std::to_string(h.mode));
    h.info.mode = h.mode;
    h.sum = static_cast<uint32_t>(s[pos]) | static_cast<uint32_t>(s[pos + 1]) << 8 |
            static_cast<uint32_t>(s[pos + 2]) << 16 | static_cast<uint32_t>(s[pos + 3]) << 24;
    pos += 4;
    if (s.size() - pos < 4) corrupt("payload is truncated");
  } else if (pos != s.size()) {
    corrupt("trailing bytes after an empty tensor");
  }
  h.info.header_bytes = pos;
  h.info.payload_bytes = s.size() - pos;
  return h;
}

int choose_shift(int mean16) {
  // About one unary step per 2^shift of magnitude keeps the number of binary decisions low; the
  // split is exact, so the shift changes speed far more than size.
  int shift = 0;
  while (shift < kMaxShift && mean16 >= (48 << shift)) ++shift;
  return shift;
}

bool valid_shape(int64_t rows, int64_t cols) {
  return rows >= 0 && cols >= 0 && rows <= kMaxDim && cols <= kMaxDim && (rows == 0 || cols <= kMaxDim / rows);
}

template <int kModels>
void encode_payload(std::vector<uint8_t>& out, const int8_t* codes, int64_t rows, int64_t cols, int mean16, int shift) {
  ArithEncoder enc(out);
  Model<kModels> model(cols, mean16, shift);
  model.run(enc, codes, nullptr, rows);
  enc.flush();
}

template <int kModels>
void decode_payload(const uint8_t* p, const uint8_t* end, int8_t* codes, int64_t rows, int64_t cols, int mean16,
                    int shift) {
  ArithDecoder dec(p, end);
  Model<kModels> model(cols, mean16, shift);
  model.run(dec, nullptr, codes, rows);
  if (!dec.finished_cleanly()) corrupt("payload does not end where the coded data ends (corrupt or trailing bytes)");
}

}  // namespace

std::vector<uint8_t> encode_codes(std::span<const int8_t> codes, int64_t rows, int64_t cols,
                                  const EntropyCodecOptions& opt) {
  if (!valid_shape(rows, cols))
    throw Error("encode_codes: invalid shape " + std::to_string(rows) + "x" + std::to_string(cols));
  if (static_cast<uint64_t>(codes.size()) != static_cast<uint64_t>(rows * cols))
    throw Error("encode_codes: " + std::to_string(codes.size()) + " codes for shape " + std::to_string(rows) + "x" +
                std::to_string(cols));
  if (opt.mode < -1 || opt.mode > 1) throw Error("encode_codes: mode must be -1 (auto), 0 or 1");
  std::vector<uint8_t> out(kMagic, kMagic + 4);
  put_varint(out, static_cast<uint64_t>(rows));
  put_varint(out, static_cast<uint64_t>(cols));
  const size_t n = codes.size();
  if (n == 0) return out;
  uint64_t sum_abs = 0;
  for (int8_t q : codes) sum_abs += static_cast<uint64_t>(q < 0 ? -q : q);
  const int mean16 = static_cast<int>(std::clamp<uint64_t>((sum_abs * 16 + n / 2) / n, 1, 2048));
  const int shift = choose_shift(mean16);
  put_varint(out, static_cast<uint64_t>(mean16));
  out.push_back(static_cast<uint8_t>(shift));
  const size_t mode_at = out.size();
  out.push_back(0);
  const uint32_t sum = checksum(codes.data(), n);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(sum >> (8 * i)));
  const size_t header = out.size();
  std::vector<uint8_t> alt;
  if (opt.mode != 1) {
    out.reserve(header + n / 2);
    encode_payload<1>(out, codes.data(), rows, cols, mean16, shift);
  }
  if (opt.mode != 0) {
    alt.assign(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(header));
    alt[mode_at] = 1;
    alt.reserve(header + n / 2);
    encode_payload<4>(alt, codes.data(), rows, cols, mean16, shift);
    if (opt.mode == 1 || alt.size() < out.size()) out.swap(alt);
  }
  return out;
}

CodesStreamInfo peek_codes_stream(std::span<const uint8_t> stream) { return parse_header(stream).info; }

std::vector<int8_t> decode_codes(std::span<const uint8_t> stream, int64_t expected_rows, int64_t expected_cols) {
  if (!valid_shape(expected_rows, expected_cols)) throw Error("decode_codes: invalid expected shape");
  const Header h = parse_header(stream);
  if (h.info.rows != expected_rows || h.info.cols != expected_cols)
    corrupt("shape " + std::to_string(h.info.rows) + "x" + std::to_string(h.info.cols) + " differs from the expected " +
            std::to_string(expected_rows) + "x" + std::to_string(expected_cols));
  std::vector<int8_t> codes(static_cast<size_t>(expected_rows * expected_cols));
  if (codes.empty()) return codes;
  const uint8_t* p = stream.data() + h.info.header_bytes;
  const uint8_t* end = stream.data() + stream.size();
  if (h.mode == 0)
    decode_payload<1>(p, end, codes.data(), expected_rows, expected_cols, h.mean16, h.shift);
  else
    decode_payload<4>(p, end, codes.data(), expected_rows, expected_cols, h.mean16, h.shift);
  if (checksum(codes.data(), codes.size()) != h.sum) corrupt("checksum mismatch (corrupt payload)");
  return codes;
}

}  // namespace ptool
