// A SentencePiece tokenizer (the challenge's .model files) and the byte look-up tables of the
// challenge's BPB metric (REFERENCE.md §2.1-§2.2).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace ptool {

enum class PieceType : uint8_t { normal, control, unknown, unused, byte };
std::string_view piece_type_name(PieceType t);

class Tokenizer {
 public:
  // Loads a SentencePiece .model file; throws Error naming the file when it cannot be read or parsed.
  static Tokenizer load(const std::string& path);
  // Parses a serialized model held in memory; `name` is used in error messages and as path().
  static Tokenizer from_bytes(std::string model_bytes, const std::string& name);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  const std::string& path() const { return path_; }
  // Lower-case hex sha256 of the .model file's bytes: the tokenizer's identity in artifacts.
  const std::string& sha256() const { return sha256_; }
  uint64_t model_bytes() const { return model_bytes_; }

  uint32_t vocab_size() const;
  PieceType piece_type(uint32_t id) const;  // throws Error when id >= vocab_size()
  std::string piece(uint32_t id) const;     // the piece text, e.g. "▁the" or "<0x0A>"
  // Id of a piece, or -1 when the vocabulary has no such piece.
  int32_t piece_to_id(std::string_view piece) const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  int32_t pad_id() const;

  // Encodes text (no BOS/EOS added); throws Error on failure.
  std::vector<uint32_t> encode(std::string_view text) const;
  // Decodes ids to text as SentencePiece does (control ids vanish, <unk> becomes " ⁇ ").
  std::string decode(std::span<const uint32_t> ids) const;

  // The underlying processor, for callers that need more of SentencePiece.
  const sentencepiece::SentencePieceProcessor& processor() const { return *sp_; }

 private:
  Tokenizer();
  std::string path_;
  std::string sha256_;
  uint64_t model_bytes_ = 0;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

// Lower-case hex sha256 (OpenSSL EVP) of a byte string, and of a file's bytes (Error naming the file).
std::string sha256_hex(std::string_view bytes);
std::string sha256_file_hex(const std::string& path);

// The byte look-up tables of REFERENCE.md §2.1, exactly as build_sentencepiece_luts builds them.
struct ByteLuts {
  std::vector<uint16_t> base_bytes;
  std::vector<uint8_t> has_leading_space;
  std::vector<uint8_t> is_boundary;

  size_t size() const { return base_bytes.size(); }
  // Bytes credited to target `target` predicted after input token `prev` (REFERENCE.md §2.2):
  // base_bytes[target] + (has_leading_space[target] && !is_boundary[prev]). Ids must be < size().
  uint32_t target_bytes(uint32_t prev, uint32_t target) const {
    return base_bytes[target] + ((has_leading_space[target] != 0 && is_boundary[prev] == 0) ? 1u : 0u);
  }
};

// Table size max(tok.vocab_size(), vocab). control/unknown/unused: 0 bytes, boundary; byte pieces: 1 byte;
// others: UTF-8 length of the piece without one leading "▁" (U+2581), has_leading_space when it had one.
// Ids beyond the tokenizer's vocabulary keep the initial values (0 bytes, boundary).
ByteLuts build_byte_luts(const Tokenizer& tok, uint32_t vocab = 0);

// Sum of target_bytes over every position after the first: sum_{t>=1} target_bytes(tokens[t-1], tokens[t]).
// Throws Error when a token id is >= luts.size().
uint64_t count_target_bytes(const ByteLuts& luts, std::span<const uint16_t> tokens);
uint64_t count_target_bytes(const ByteLuts& luts, std::span<const uint32_t> tokens);
uint64_t count_target_bytes(const ByteLuts& luts, std::span<const int32_t> tokens);

}  // namespace ptool
