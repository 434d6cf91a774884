// What `ptool inspect` shows: an artifact's header, metadata, tensor table and byte breakdown, after verifying
// every checksum. The logic lives here so that cmd/inspect.cpp stays a thin shell.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/artifact.h"

namespace ptool {

inline constexpr uint64_t kDefaultByteBudget = 16'000'000;

// The summary of a loaded artifact as one JSON object (keys in a fixed order):
// file, file_bytes, version, stage, header_bytes, metadata_bytes, metadata, tensors[], sections[],
// bytes{header, padding, stored, raw, total, budget, fits_budget, headroom}, checksums{verified, header, sections, tensors, ok}.
nlohmann::ordered_json artifact_summary(const std::string& path, const ArtifactLayout& layout, const Artifact& artifact,
                                        uint64_t budget = kDefaultByteBudget);

// Reads `path`, verifying every checksum (throws Error on any defect), and summarises it.
nlohmann::ordered_json inspect_artifact(const std::string& path, uint64_t budget = kDefaultByteBudget);

// Human-readable rendering of a summary, ending in a newline.
std::string format_summary_text(const nlohmann::ordered_json& summary);

// A summary as one line of JSON (invalid UTF-8 in a file name is replaced, never thrown on).
std::string format_summary_json(const nlohmann::ordered_json& summary);

}  // namespace ptool
