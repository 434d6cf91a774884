// Atomic file output: a temp file beside the target, fsync, rename, fsync of the folder. On any failure
// the temp file is removed and the target is untouched. Errors read "<path>: cannot write <what>: <step>".
#pragma once
#include <cstdint>
#include <span>
#include <string>

namespace ptool {

void write_file_atomic(const std::string& path, std::span<const uint8_t> bytes, const std::string& what = "file");

}  // namespace ptool
