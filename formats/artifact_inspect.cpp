#include "formats/artifact_inspect.h"

#include <algorithm>
#include <cstdio>
#include <limits>

#include "formats/error.h"

namespace ptool {

namespace {

std::string hex64(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string commas(uint64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string commas_signed(int64_t v) { return v < 0 ? "-" + commas(static_cast<uint64_t>(-(v + 1)) + 1) : commas(static_cast<uint64_t>(v)); }

std::string shape_text(const nlohmann::ordered_json& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i].get<int64_t>());
  return s + "]";
}

// Columns padded to their widest cell; columns listed in `right` are right-aligned.
std::string render_table(const std::vector<std::vector<std::string>>& rows, const std::vector<bool>& right) {
  std::vector<size_t> width;
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size(); ++c) {
      if (width.size() <= c) width.push_back(0);
      width[c] = std::max(width[c], r[c].size());
    }
  std::string out;
  for (const auto& r : rows) {
    std::string line = " ";
    for (size_t c = 0; c < r.size(); ++c) {
      const std::string pad(width[c] - r[c].size(), ' ');
      line += "  ";
      line += (c < right.size() && right[c]) ? pad + r[c] : r[c] + (c + 1 < r.size() ? pad : "");
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

}  // namespace

nlohmann::ordered_json artifact_summary(const std::string& path, const ArtifactLayout& L, const Artifact& a,
                                        uint64_t budget) {
  using oj = nlohmann::ordered_json;
  oj s;
  s["file"] = path;
  s["file_bytes"] = L.file_bytes;
  s["version"] = std::to_string(L.version_major) + "." + std::to_string(L.version_minor);
  s["stage"] = std::string(stage_name(L.stage));
  s["header_bytes"] = L.header_bytes;
  s["metadata_bytes"] = L.metadata_bytes;
  s["metadata"] = oj::parse(L.metadata.dump());

  oj tensors = oj::array();
  for (const TensorInfo& t : L.tensors) {
    oj j;
    j["name"] = t.name;
    j["shape"] = t.shape;
    j["dtype"] = std::string(dtype_name(t.dtype));
    j["scheme"] = t.scheme;
    j["scheme_version"] = t.scheme_version;
    j["section"] = L.sections[t.section].name;
    j["offset"] = t.offset;
    j["bytes"] = t.length;
    j["xxh64"] = hex64(t.checksum);
    tensors.push_back(std::move(j));
  }
  s["tensors"] = std::move(tensors);

  oj sections = oj::array();
  uint64_t stored = 0, raw = 0;
  std::vector<uint64_t> count(L.sections.size(), 0);
  for (const TensorInfo& t : L.tensors) ++count[t.section];
  for (size_t i = 0; i < L.sections.size(); ++i) {
    const SectionInfo& x = L.sections[i];
    oj j;
    j["name"] = x.name;
    j["codec"] = std::string(codec_name(x.codec));
    j["shuffle_stride"] = x.shuffle_stride;
    j["alignment"] = x.alignment;
    j["tensors"] = count[i];
    j["file_offset"] = x.file_offset;
    j["raw_bytes"] = x.raw_bytes;
    j["stored_bytes"] = x.stored_bytes;
    j["xxh64"] = hex64(x.stored_checksum);
    sections.push_back(std::move(j));
    stored += x.stored_bytes;
    raw += x.raw_bytes;
  }
  s["sections"] = std::move(sections);

  oj bytes;
  bytes["header"] = L.header_bytes;
  bytes["padding"] = L.file_bytes - L.header_bytes - stored;
  bytes["stored"] = stored;
  bytes["raw"] = raw;
  bytes["total"] = L.file_bytes;
  bytes["budget"] = budget;
  bytes["fits_budget"] = L.file_bytes <= budget;
  constexpr uint64_t kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  bytes["headroom"] = budget >= L.file_bytes ? static_cast<int64_t>(std::min(budget - L.file_bytes, kMax))
                                             : -static_cast<int64_t>(std::min(L.file_bytes - budget, kMax));
  s["bytes"] = std::move(bytes);

  // read_artifact verified every checksum before we got here.
  oj sums;
  sums["verified"] = 1 + L.sections.size() + a.tensors.size();
  sums["header"] = 1;
  sums["sections"] = L.sections.size();
  sums["tensors"] = a.tensors.size();
  sums["ok"] = true;
  s["checksums"] = std::move(sums);
  return s;
}

nlohmann::ordered_json inspect_artifact(const std::string& path, uint64_t budget) {
  ArtifactLayout layout;
  Artifact a = read_artifact(path, layout);
  return artifact_summary(path, layout, a, budget);
}

std::string format_summary_json(const nlohmann::ordered_json& s) {
  return s.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

std::string format_summary_text(const nlohmann::ordered_json& s) {
  const auto u = [&](const nlohmann::ordered_json& v) { return v.get<uint64_t>(); };
  std::string out;
  const auto& sections = s["sections"];
  const auto& tensors = s["tensors"];
  out += "file      " + s["file"].get<std::string>() + "\n";
  out += "format    PTOOLART " + s["version"].get<std::string>() + ", stage " + s["stage"].get<std::string>() + ", " +
         commas(u(s["file_bytes"])) + " bytes\n";
  out += "header    " + commas(u(s["header_bytes"])) + " bytes (metadata " + commas(u(s["metadata_bytes"])) + " bytes, " +
         std::to_string(sections.size()) + " sections, " + std::to_string(tensors.size()) + " tensors)\n";

  out += "\nmetadata\n";
  std::string meta = s["metadata"].dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  out += "  ";
  for (char c : meta) {
    out += c;
    if (c == '\n') out += "  ";
  }
  out += "\n";

  out += "\ntensors (" + std::to_string(tensors.size()) + ")\n";
  if (!tensors.empty()) {
    std::vector<std::vector<std::string>> rows{{"name", "shape", "dtype", "scheme", "section", "offset", "bytes"}};
    for (const auto& t : tensors) {
      std::string scheme = t["scheme"].get<std::string>();
      scheme = scheme.empty() ? "-" : scheme + " v" + std::to_string(t["scheme_version"].get<uint32_t>());
      rows.push_back({t["name"].get<std::string>(), shape_text(t["shape"]), t["dtype"].get<std::string>(), scheme,
                      t["section"].get<std::string>(), commas(u(t["offset"])), commas(u(t["bytes"]))});
    }
    out += render_table(rows, {false, false, false, false, false, true, true});
  }

  out += "\nsections (" + std::to_string(sections.size()) + ")\n";
  if (!sections.empty()) {
    std::vector<std::vector<std::string>> rows{
        {"name", "codec", "shuffle", "tensors", "file offset", "raw", "stored", "stored/raw"}};
    for (const auto& x : sections) {
      const uint64_t raw = u(x["raw_bytes"]), stored = u(x["stored_bytes"]);
      char ratio[32];
      if (raw)
        std::snprintf(ratio, sizeof ratio, "%.3f", static_cast<double>(stored) / static_cast<double>(raw));
      else
        std::snprintf(ratio, sizeof ratio, "-");
      const unsigned stride = x["shuffle_stride"].get<unsigned>();
      rows.push_back({x["name"].get<std::string>(), x["codec"].get<std::string>(),
                      stride >= 2 ? std::to_string(stride) : "-", std::to_string(u(x["tensors"])),
                      commas(u(x["file_offset"])), commas(raw), commas(stored), ratio});
    }
    out += render_table(rows, {false, false, true, true, true, true, true, true});
  }

  const auto& b = s["bytes"];
  out += "\nbytes\n";
  std::vector<std::vector<std::string>> rows{{"header", commas(u(b["header"])), ""},
                                             {"padding", commas(u(b["padding"])), ""}};
  for (const auto& x : sections)
    rows.push_back({"section " + x["name"].get<std::string>(), commas(u(x["stored_bytes"])),
                    "(" + x["codec"].get<std::string>() + ", raw " + commas(u(x["raw_bytes"])) + ")"});
  const int64_t headroom = b["headroom"].get<int64_t>();
  rows.push_back({"total", commas(u(b["total"])),
                  "of the " + commas(u(b["budget"])) + "-byte budget: " +
                      (b["fits_budget"].get<bool>() ? commas_signed(headroom) + " to spare"
                                                    : "OVER by " + commas_signed(-headroom))});
  out += render_table(rows, {false, true, false});

  const auto& c = s["checksums"];
  out += "\nchecksums: all " + std::to_string(u(c["verified"])) + " checksums OK (1 header, " +
         std::to_string(u(c["sections"])) + " sections, " + std::to_string(u(c["tensors"])) + " tensors)\n";
  return out;
}

}  // namespace ptool
