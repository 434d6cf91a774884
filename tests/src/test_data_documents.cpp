// Corpus readers (src/data/documents.h): text with blank-line separated documents, JSONL with "text".
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "formats/error.h"
#include "src/data/documents.h"
#include "test_temp_dir.h"

namespace fs = std::filesystem;
using ptool::Error;
using ptool::data::DocumentReader;
using ptool::data::InputFormat;

namespace {

struct DocsTempDir : ptool_test::TempDir {
  DocsTempDir() : TempDir("docs") {}
};

std::vector<std::string> read_all(DocumentReader& r) {
  std::vector<std::string> docs;
  std::string d;
  while (r.next(d)) docs.push_back(d);
  return docs;
}

std::string error_of(const std::vector<std::string>& files, InputFormat f) {
  try {
    DocumentReader r(files, f);
    read_all(r);
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("expected ptool::Error");
  return {};
}

}  // namespace

TEST_CASE("text documents are runs of non-blank lines", "[data][documents]") {
  DocsTempDir dir;
  const auto a = dir.write("a.txt", "\n\nfirst line\nsecond line\n\n\n  \t\nthird\r\nfourth\r\n\r\nlast without newline");
  const auto b = dir.write("b.txt", "next file\n");
  const auto empty = dir.write("empty.txt", "");
  DocumentReader r({a, empty, b}, InputFormat::auto_detect);
  const auto docs = read_all(r);
  CHECK(docs == std::vector<std::string>{"first line\nsecond line", "third\nfourth", "last without newline", "next file"});
  CHECK(r.documents() == 4);
  CHECK(r.total_bytes() == fs::file_size(a) + fs::file_size(b));
  CHECK(r.bytes_read() == r.total_bytes());
  std::string d;
  CHECK_FALSE(r.next(d));  // stays at the end
}

TEST_CASE("JSONL documents come from the text field", "[data][documents]") {
  DocsTempDir dir;
  const auto p = dir.write("d.jsonl",
                           "{\"text\": \"hello\\nworld\", \"id\": 1}\n"
                           "\n"
                           "{\"id\": 2, \"text\": \"\"}\n"
                           "{\"text\": \"caf\\u00e9 \xE6\x9D\xB1\"}");
  DocumentReader r({p}, InputFormat::auto_detect);
  CHECK(read_all(r) == std::vector<std::string>{"hello\nworld", "", "caf\xC3\xA9 \xE6\x9D\xB1"});
  // Forced text format reads the same file as one text document.
  DocumentReader t({p}, InputFormat::text);
  CHECK(read_all(t).size() == 2);
}

TEST_CASE("JSONL errors name the file and line", "[data][documents]") {
  DocsTempDir dir;
  const auto bad_json = dir.write("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
  CHECK_THAT(error_of({bad_json}, InputFormat::auto_detect), Catch::StartsWith(bad_json + ":2: invalid JSON"));
  const auto not_obj = dir.write("arr.jsonl", "[1, 2]\n");
  CHECK_THAT(error_of({not_obj}, InputFormat::jsonl), Catch::StartsWith(not_obj + ":1:"));
  const auto no_text = dir.write("nt.jsonl", "{\"text\": \"a\"}\n\n{\"body\": \"a\"}\n");
  CHECK_THAT(error_of({no_text}, InputFormat::jsonl), Catch::StartsWith(no_text + ":3:") && Catch::Contains("\"text\""));
  const auto num_text = dir.write("num.jsonl", "{\"text\": 5}\n");
  CHECK_THAT(error_of({num_text}, InputFormat::jsonl), Catch::StartsWith(num_text + ":1:"));
  for (const auto& m : {error_of({bad_json}, InputFormat::jsonl), error_of({no_text}, InputFormat::jsonl)})
    CHECK(m.find('\n') == std::string::npos);
}

TEST_CASE("input formats and missing inputs", "[data][documents]") {
  using ptool::data::resolve_input_format;
  CHECK(resolve_input_format(InputFormat::auto_detect, "x/docs.jsonl") == InputFormat::jsonl);
  CHECK(resolve_input_format(InputFormat::auto_detect, "docs.ndjson") == InputFormat::jsonl);
  CHECK(resolve_input_format(InputFormat::auto_detect, "docs.json") == InputFormat::jsonl);
  CHECK(resolve_input_format(InputFormat::auto_detect, "docs.txt") == InputFormat::text);
  CHECK(resolve_input_format(InputFormat::text, "docs.jsonl") == InputFormat::text);
  CHECK(ptool::data::parse_input_format("jsonl") == InputFormat::jsonl);
  CHECK(ptool::data::parse_input_format("auto") == InputFormat::auto_detect);
  CHECK_THROWS_AS(ptool::data::parse_input_format("csv"), Error);

  DocsTempDir dir;
  const auto missing = (dir.path / "missing.txt").string();
  CHECK_THAT(error_of({missing}, InputFormat::text), Catch::Contains(missing));
  CHECK_THROWS_AS(DocumentReader({}, InputFormat::text), Error);
  CHECK_THAT(error_of({dir.path.string()}, InputFormat::text), Catch::Contains("not a regular file"));
}
