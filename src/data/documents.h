// Reading documents from corpus files: plain text (documents separated by blank lines) or JSONL
// (one JSON object per line with a string field "text", like the challenge's docs_selected.jsonl).
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace ptool::data {

enum class InputFormat { auto_detect, text, jsonl };
InputFormat parse_input_format(std::string_view name);  // "auto", "text", "jsonl"; throws Error otherwise
std::string_view input_format_name(InputFormat f);
// auto: files ending in .jsonl, .ndjson or .json are JSONL, everything else is text.
InputFormat resolve_input_format(InputFormat f, const std::string& path);

// Streams documents from a list of files, in order.
// Text: a document is a maximal run of non-blank lines (a blank line is empty or only spaces, tabs, \r),
// joined with "\n"; a trailing "\r" is removed from each line. JSONL: every non-blank line must be an
// object with a string "text"; that string is the document (empty documents are kept).
// Errors name the file and the line.
class DocumentReader {
 public:
  DocumentReader(std::vector<std::string> paths, InputFormat format);
  // Reads the next document into doc; false at the end of the last file.
  bool next(std::string& doc);
  uint64_t bytes_read() const { return done_bytes_ + file_bytes_; }  // input bytes consumed so far
  uint64_t total_bytes() const { return total_bytes_; }              // sum of the input files' sizes
  uint64_t documents() const { return documents_; }
  const std::string& current_path() const;

 private:
  bool open_next_file();
  bool next_text(std::string& doc);
  bool next_jsonl(std::string& doc);
  bool getline(std::string& line);

  std::vector<std::string> paths_;
  InputFormat format_;
  size_t index_ = 0;  // index of the open file + 1 (0: none opened yet)
  InputFormat current_format_ = InputFormat::text;
  std::ifstream in_;
  uint64_t line_no_ = 0;
  uint64_t file_bytes_ = 0;
  uint64_t done_bytes_ = 0;
  uint64_t total_bytes_ = 0;
  uint64_t documents_ = 0;
  std::string line_;
};

}  // namespace ptool::data
