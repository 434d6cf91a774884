#include "src/quant/spec.h"

#include <cmath>

#include "formats/error.h"

namespace ptool::quant {

namespace {
constexpr Clip kAllClips[] = {Clip::clean, Clip::rowmax, Clip::ste_rowmax, Clip::search, Clip::sdclip, Clip::hsdclip};
}

std::string_view clip_name(Clip c) {
  switch (c) {
    case Clip::clean: return "clean";
    case Clip::rowmax: return "rowmax";
    case Clip::ste_rowmax: return "ste_rowmax";
    case Clip::search: return "search";
    case Clip::sdclip: return "sdclip";
    case Clip::hsdclip: return "hsdclip";
  }
  return "unknown";
}

Clip parse_clip(std::string_view name) {
  if (name == "gptq_lite") return Clip::search;
  for (Clip c : kAllClips)
    if (clip_name(c) == name) return c;
  throw Error("unknown clip rule '" + std::string(name) +
              "' (expected clean, rowmax, ste_rowmax, gptq_lite/search, sdclip or hsdclip)");
}

double QuantSpec::floor_value() const {
  if (scale_floor >= 0) return scale_floor;
  const double R = range();
  switch (clip) {
    case Clip::clean:
    case Clip::rowmax:
    case Clip::search: return 1.0 / R;
    case Clip::ste_rowmax: return 1.0 / (R * R);
    case Clip::sdclip:
    case Clip::hsdclip: return 1e-10;
  }
  return 0;
}

void check_spec(const QuantSpec& s) {
  if (s.bits < 2 || s.bits > 8) throw Error("quant bits " + std::to_string(s.bits) + " is outside 2..8");
  if (s.clip == Clip::clean && !(s.percentile > 0 && s.percentile <= 1))
    throw Error("clip percentile " + std::to_string(s.percentile) + " is outside (0, 1]");
  if (s.clip == Clip::search) {
    if (s.percentiles.empty()) throw Error("percentile search needs at least one percentile");
    for (double p : s.percentiles)
      if (!(p > 0 && p <= 1)) throw Error("search percentile " + std::to_string(p) + " is outside (0, 1]");
  }
  if ((s.clip == Clip::sdclip || s.clip == Clip::hsdclip) && !(s.k > 0 && std::isfinite(s.k)))
    throw Error("SDClip k " + std::to_string(s.k) + " must be positive");
  if (s.clip == Clip::hsdclip && !(s.lambda >= 0 && s.lambda <= 1))
    throw Error("Hessian SDClip lambda " + std::to_string(s.lambda) + " is outside [0, 1]");
  if (!std::isfinite(s.scale_floor)) throw Error("scale floor must be finite");
  const GptqOptions& g = s.gptq_options;
  if (!(g.percdamp > 0 && std::isfinite(g.percdamp)))
    throw Error("GPTQ damping " + std::to_string(g.percdamp) + " must be positive");
  if (g.block_size < 1) throw Error("GPTQ block size " + std::to_string(g.block_size) + " must be >= 1");
  if (g.max_retries < 0 || g.max_retries > 12)
    throw Error("GPTQ retries " + std::to_string(g.max_retries) + " is outside 0..12");
}

std::string scheme_name(const QuantSpec& s) {
  std::string name = "int" + std::to_string(s.bits) + "_";
  if (!s.gptq && s.clip == Clip::search) return name + "gptq_lite";
  if (s.gptq) name += "gptq_";
  return name + std::string(clip_name(s.clip));
}

SchemeInfo parse_scheme(std::string_view scheme) {
  auto bad = [&] { return Error("unknown quant scheme '" + std::string(scheme) + "'"); };
  if (scheme.size() < 6 || scheme.substr(0, 3) != "int" || scheme[4] != '_') throw bad();
  SchemeInfo info;
  info.bits = scheme[3] - '0';
  if (info.bits < 2 || info.bits > 8) throw bad();
  std::string_view rest = scheme.substr(5);
  if (rest == "gptq_lite") {
    info.clip = Clip::search;
    return info;
  }
  if (rest.starts_with("gptq_")) {
    info.gptq = true;
    rest.remove_prefix(5);
  }
  bool found = false;
  for (Clip c : kAllClips)
    if (clip_name(c) == rest) {
      info.clip = c;
      found = true;
    }
  if (!found) throw bad();
  info.tensor_scale_f32 = info.clip == Clip::clean && !info.gptq;
  return info;
}

}  // namespace ptool::quant
