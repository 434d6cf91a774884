#include "src/data/documents.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "formats/error.h"

namespace ptool::data {

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r\f\v") == std::string_view::npos;
}

}  // namespace

InputFormat parse_input_format(std::string_view name) {
  if (name == "auto") return InputFormat::auto_detect;
  if (name == "text") return InputFormat::text;
  if (name == "jsonl") return InputFormat::jsonl;
  throw Error("unknown input format '" + std::string(name) + "' (expected auto, text or jsonl)");
}

std::string_view input_format_name(InputFormat f) {
  switch (f) {
    case InputFormat::auto_detect: return "auto";
    case InputFormat::text: return "text";
    case InputFormat::jsonl: return "jsonl";
  }
  return "?";
}

InputFormat resolve_input_format(InputFormat f, const std::string& path) {
  if (f != InputFormat::auto_detect) return f;
  if (ends_with(path, ".jsonl") || ends_with(path, ".ndjson") || ends_with(path, ".json")) return InputFormat::jsonl;
  return InputFormat::text;
}

DocumentReader::DocumentReader(std::vector<std::string> paths, InputFormat format)
    : paths_(std::move(paths)), format_(format) {
  if (paths_.empty()) throw Error("no input files given");
  for (const auto& p : paths_) {
    std::error_code ec;
    const auto st = std::filesystem::status(p, ec);
    if (ec || !std::filesystem::exists(st)) throw Error(p + ": no such input file");
    if (!std::filesystem::is_regular_file(st)) throw Error(p + ": input is not a regular file");
    total_bytes_ += std::filesystem::file_size(p, ec);
  }
}

const std::string& DocumentReader::current_path() const {
  static const std::string none;
  return index_ == 0 ? none : paths_[index_ - 1];
}

bool DocumentReader::open_next_file() {
  if (in_.is_open()) {
    in_.close();
    done_bytes_ += file_bytes_;
    file_bytes_ = 0;
  }
  if (index_ >= paths_.size()) return false;
  const std::string& p = paths_[index_++];
  in_.clear();
  in_.open(p, std::ios::binary);
  if (!in_) throw Error(p + ": cannot open input: " + std::strerror(errno));
  current_format_ = resolve_input_format(format_, p);
  line_no_ = 0;
  return true;
}

bool DocumentReader::getline(std::string& line) {
  if (!std::getline(in_, line)) {
    if (in_.bad()) throw Error(current_path() + ": read error after line " + std::to_string(line_no_));
    return false;
  }
  ++line_no_;
  file_bytes_ += line.size() + (in_.eof() ? 0 : 1);
  return true;
}

bool DocumentReader::next(std::string& doc) {
  for (;;) {
    if (!in_.is_open() && !open_next_file()) return false;
    const bool got = current_format_ == InputFormat::jsonl ? next_jsonl(doc) : next_text(doc);
    if (got) {
      ++documents_;
      return true;
    }
    if (!open_next_file()) return false;
  }
}

bool DocumentReader::next_text(std::string& doc) {
  doc.clear();
  bool any = false;
  while (getline(line_)) {
    if (is_blank(line_)) {
      if (any) return true;
      continue;
    }
    if (!line_.empty() && line_.back() == '\r') line_.pop_back();
    if (any) doc.push_back('\n');
    doc += line_;
    any = true;
  }
  return any;
}

bool DocumentReader::next_jsonl(std::string& doc) {
  while (getline(line_)) {
    if (is_blank(line_)) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line_);
    } catch (const nlohmann::json::parse_error& e) {
      throw Error(current_path() + ":" + std::to_string(line_no_) + ": invalid JSON (" + e.what() + ")");
    }
    if (!j.is_object()) throw Error(current_path() + ":" + std::to_string(line_no_) + ": JSONL line is not an object");
    const auto it = j.find("text");
    if (it == j.end() || !it->is_string())
      throw Error(current_path() + ":" + std::to_string(line_no_) + ": JSONL object has no string field \"text\"");
    doc = it->get_ref<const std::string&>();
    return true;
  }
  return false;
}

}  // namespace ptool::data
