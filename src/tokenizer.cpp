#include "src/tokenizer.h"

#include <openssl/evp.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <type_traits>

#include "formats/error.h"

namespace ptool {

namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁"

std::string read_file_bytes(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open " + what + ": " + std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(path + ": cannot read " + what);
  return bytes;
}

template <class T>
bool in_table(T id, size_t n) {
  if constexpr (std::is_signed_v<T>)
    if (id < 0) return false;
  return static_cast<uint64_t>(id) < n;
}

template <class T>
uint64_t count_bytes_impl(const ByteLuts& luts, std::span<const T> tokens) {
  const size_t n = luts.size();
  for (size_t i = 0; i < tokens.size(); ++i)
    if (!in_table(tokens[i], n))
      throw Error("token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                  " is outside the byte table of size " + std::to_string(n));
  uint64_t total = 0;
  for (size_t i = 1; i < tokens.size(); ++i)
    total += luts.target_bytes(static_cast<uint32_t>(tokens[i - 1]), static_cast<uint32_t>(tokens[i]));
  return total;
}

}  // namespace

std::string_view piece_type_name(PieceType t) {
  switch (t) {
    case PieceType::normal: return "normal";
    case PieceType::control: return "control";
    case PieceType::unknown: return "unknown";
    case PieceType::unused: return "unused";
    case PieceType::byte: return "byte";
  }
  return "?";
}

std::string sha256_hex(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr) != 1)
    throw Error("sha256 computation failed (OpenSSL EVP_Digest)");
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(2 * len);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(hex[md[i] >> 4]);
    out.push_back(hex[md[i] & 15]);
  }
  return out;
}

std::string sha256_file_hex(const std::string& path) { return sha256_hex(read_file_bytes(path, "file")); }

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  return from_bytes(read_file_bytes(path, "tokenizer model"), path);
}

Tokenizer Tokenizer::from_bytes(std::string model_bytes, const std::string& name) {
  Tokenizer t;
  t.path_ = name;
  t.model_bytes_ = model_bytes.size();
  t.sha256_ = sha256_hex(model_bytes);
  const auto st = t.sp_->LoadFromSerializedProto(model_bytes);
  if (!st.ok()) throw Error(name + ": not a SentencePiece model (" + st.ToString() + ")");
  if (t.sp_->GetPieceSize() <= 0) throw Error(name + ": SentencePiece model has an empty vocabulary");
  if (t.sp_->GetPieceSize() > 65536)
    throw Error(name + ": vocabulary of " + std::to_string(t.sp_->GetPieceSize()) +
                " pieces does not fit uint16 token shards (at most 65536)");
  return t;
}

uint32_t Tokenizer::vocab_size() const { return static_cast<uint32_t>(sp_->GetPieceSize()); }

PieceType Tokenizer::piece_type(uint32_t id) const {
  if (id >= vocab_size())
    throw Error(path_ + ": piece id " + std::to_string(id) + " is outside the vocabulary of " +
                std::to_string(vocab_size()));
  const int i = static_cast<int>(id);
  if (sp_->IsControl(i)) return PieceType::control;
  if (sp_->IsUnknown(i)) return PieceType::unknown;
  if (sp_->IsUnused(i)) return PieceType::unused;
  if (sp_->IsByte(i)) return PieceType::byte;
  return PieceType::normal;
}

std::string Tokenizer::piece(uint32_t id) const {
  if (id >= vocab_size())
    throw Error(path_ + ": piece id " + std::to_string(id) + " is outside the vocabulary of " +
                std::to_string(vocab_size()));
  return sp_->IdToPiece(static_cast<int>(id));
}

int32_t Tokenizer::piece_to_id(std::string_view piece) const {
  const int id = sp_->PieceToId(piece);
  // PieceToId answers unk_id for an unknown piece; only the <unk> piece itself maps there legitimately.
  if (id == sp_->unk_id() && sp_->IdToPiece(id) != piece) return -1;
  return id;
}

int32_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int32_t Tokenizer::eos_id() const { return sp_->eos_id(); }
int32_t Tokenizer::unk_id() const { return sp_->unk_id(); }
int32_t Tokenizer::pad_id() const { return sp_->pad_id(); }

std::vector<uint32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto st = sp_->Encode(text, &ids);
  if (!st.ok()) throw Error(path_ + ": encoding failed (" + st.ToString() + ")");
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(std::span<const uint32_t> ids) const {
  std::vector<int> v;
  v.reserve(ids.size());
  for (uint32_t id : ids) {
    if (id >= vocab_size())
      throw Error(path_ + ": cannot decode id " + std::to_string(id) + ", outside the vocabulary of " +
                  std::to_string(vocab_size()));
    v.push_back(static_cast<int>(id));
  }
  std::string out;
  const auto st = sp_->Decode(v, &out);
  if (!st.ok()) throw Error(path_ + ": decoding failed (" + st.ToString() + ")");
  return out;
}

ByteLuts build_byte_luts(const Tokenizer& tok, uint32_t vocab) {
  const uint32_t sp_vocab = tok.vocab_size();
  const uint32_t n = std::max(sp_vocab, vocab);
  ByteLuts l;
  l.base_bytes.assign(n, 0);
  l.has_leading_space.assign(n, 0);
  l.is_boundary.assign(n, 1);
  for (uint32_t id = 0; id < sp_vocab; ++id) {
    const PieceType t = tok.piece_type(id);
    if (t == PieceType::control || t == PieceType::unknown || t == PieceType::unused) continue;
    l.is_boundary[id] = 0;
    if (t == PieceType::byte) {
      l.base_bytes[id] = 1;
      continue;
    }
    std::string_view p = tok.processor().IdToPiece(static_cast<int>(id));
    if (p.starts_with(kSpaceSymbol)) {
      l.has_leading_space[id] = 1;
      p.remove_prefix(kSpaceSymbol.size());
    }
    l.base_bytes[id] = static_cast<uint16_t>(p.size());
  }
  return l;
}

uint64_t count_target_bytes(const ByteLuts& luts, std::span<const uint16_t> tokens) {
  return count_bytes_impl(luts, tokens);
}
uint64_t count_target_bytes(const ByteLuts& luts, std::span<const uint32_t> tokens) {
  return count_bytes_impl(luts, tokens);
}
uint64_t count_target_bytes(const ByteLuts& luts, std::span<const int32_t> tokens) {
  return count_bytes_impl(luts, tokens);
}

}  // namespace ptool
