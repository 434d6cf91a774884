// libFuzzer target for the artifact reader (scripts/fuzz.sh builds and runs it; seeds in fuzz/corpus_artifact/).
// A ptool::Error is the only acceptable failure. A crash, a sanitizer report, a leak, any other exception
// (bad_alloc, a JSON exception, ...) or an artifact that does not survive a write/read round trip is a bug.
// Built with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, the reader does not enforce checksums, so mutated
// inputs reach the code behind them.
#include <cstdint>
#include <span>

#include "formats/artifact.h"
#include "formats/artifact_inspect.h"
#include "formats/error.h"

namespace {

// A resource limit of this harness, not of the reader: inputs that would decode to more than this are only
// checked up to their layout (the reader itself bounds what it allocates by what the streams really hold).
constexpr uint64_t kMaxRawBytes = 64ull << 20;

bool small_enough(const ptool::ArtifactLayout& layout) {
  uint64_t raw = 0;
  for (const auto& s : layout.sections) {
    if (s.raw_bytes > kMaxRawBytes - raw) return false;
    raw += s.raw_bytes;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  try {
    if (!small_enough(ptool::parse_artifact_layout(bytes, "fuzz.ptc"))) return 0;
  } catch (const ptool::Error&) {
    return 0;
  }
  ptool::ArtifactLayout layout;
  ptool::Artifact a;
  try {
    a = ptool::parse_artifact(bytes, "fuzz.ptc", layout);
  } catch (const ptool::Error&) {
    return 0;
  }
  // What inspect prints must be printable.
  const auto summary = ptool::artifact_summary("fuzz.ptc", layout, a);
  (void)ptool::format_summary_text(summary);
  (void)ptool::format_summary_json(summary);

  // What was read must write (with the same section settings) and read back unchanged. No Error allowed here.
  ptool::WriteOptions opt;
  for (const auto& s : layout.sections)
    opt.sections.push_back({s.name, {s.codec, 1, 0}, s.shuffle_stride, s.alignment});
  const std::vector<uint8_t> again = ptool::serialize_artifact(a, opt);
  const ptool::Artifact b = ptool::parse_artifact(again, "fuzz-roundtrip.ptc");
  if (b.stage != a.stage || b.metadata != a.metadata || b.tensors != a.tensors) __builtin_trap();
  return 0;
}
