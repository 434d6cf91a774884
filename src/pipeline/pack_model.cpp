#include "src/pipeline/pack_model.h"

#include <map>

#include "formats/error.h"
#include "src/quant/rules.h"

namespace ptool::pipeline {

std::string pack_section(const TensorRecord& r) {
  if (r.scheme.empty()) return "float";
  return "codes." + std::string(quant::class_name(quant::classify_param(r.name)));
}

namespace {

// Stored size of one section's tensors alone under the given options (the same bytes the artifact will
// hold for that section, so the choice per section is exact).
uint64_t section_stored_bytes(const std::vector<const TensorRecord*>& recs, const SectionOptions& so) {
  Artifact a;
  a.stage = Stage::packed;
  for (auto* r : recs) a.tensors.push_back(*r);
  WriteOptions wo;
  wo.sections.push_back(so);
  ArtifactLayout layout = parse_artifact_layout(serialize_artifact(a, wo), "candidate");
  return layout.sections.at(0).stored_bytes;
}

std::vector<SectionOptions> candidates(const std::string& name, const PackOptions& opt) {
  // arith codes int8 matrices; a float section has none, so it gets Brotli (what arith would use for it).
  const bool codes = name != "float";
  std::vector<Codec> codecs;
  if (opt.codec == "auto")
    codecs = codes ? std::vector<Codec>{Codec::zlib, Codec::zstd, Codec::brotli, Codec::arith}
                   : std::vector<Codec>{Codec::zlib, Codec::zstd, Codec::brotli};
  else if (const Codec c = parse_codec(opt.codec); c == Codec::none)
    throw Error("pack needs a compressing codec (zlib, zstd, brotli, arith or auto), not none");
  else
    codecs = {c == Codec::arith && !codes ? Codec::brotli : c};
  std::vector<SectionOptions> out;
  for (Codec c : codecs)
    for (uint8_t shuffle : {uint8_t(0), uint8_t(2), uint8_t(4)}) {
      // Byte shuffle groups the bytes of multi-byte floats; int8 codes are single bytes.
      if (shuffle != 0 && codes) continue;
      SectionOptions so;
      so.name = name;
      so.codec.codec = c;
      so.codec.level = opt.level;
      so.codec.window_log = c == Codec::brotli ? 24 : 0;
      so.shuffle_stride = shuffle;
      so.alignment = 1;  // packed sections are dense: alignment padding only costs bytes
      out.push_back(so);
    }
  return out;
}

}  // namespace

PackResult pack_model(const Artifact& q, const PackOptions& opt) {
  if (q.stage == Stage::checkpoint) throw Error("pack needs a quantized artifact; run `ptool quantize` first");
  Artifact a = q;
  a.stage = Stage::packed;
  std::map<std::string, std::vector<const TensorRecord*>> groups;
  for (auto& r : a.tensors) {
    r.section = pack_section(r);
    groups[r.section].push_back(&r);
  }
  WriteOptions wo;
  PackResult res;
  for (auto& [name, recs] : groups) {
    const auto options = candidates(name, opt);
    SectionOptions best = options.front();
    uint64_t best_bytes = UINT64_MAX;
    // A single candidate needs no trial compression (zstd-22 and brotli-11 take seconds per megabyte).
    for (auto& so : options.size() > 1 ? options : std::vector<SectionOptions>{}) {
      const uint64_t b = section_stored_bytes(recs, so);
      if (b < best_bytes) {
        best_bytes = b;
        best = so;
      }
    }
    wo.sections.push_back(best);
    SectionReport sr;
    sr.name = name;
    sr.codec = std::string(codec_name(best.codec.codec));
    sr.shuffle = best.shuffle_stride;
    sr.tensors = static_cast<int64_t>(recs.size());
    res.sections.push_back(sr);
  }
  // Metadata is stored uncompressed in the header: keep only what eval needs and the provenance.
  a.metadata.erase("quantization");
  res.bytes = serialize_artifact(a, wo);
  ArtifactLayout layout = parse_artifact_layout(res.bytes, "packed artifact");
  for (auto& sr : res.sections)
    for (auto& si : layout.sections)
      if (si.name == sr.name) {
        sr.raw_bytes = si.raw_bytes;
        sr.stored_bytes = si.stored_bytes;
      }
  res.total_bytes = res.bytes.size() + opt.code_bytes;
  res.fits = res.total_bytes <= opt.budget;
  return res;
}

}  // namespace ptool::pipeline
