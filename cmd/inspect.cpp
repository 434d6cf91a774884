// ptool inspect FILE [--json]: header, metadata, tensor table, byte breakdown; verifies every checksum.
#include <cstdio>
#include <memory>

#include "cmd/commands.h"
#include "formats/artifact_inspect.h"

namespace ptool::cmd {

void add_inspect(CLI::App& app) {
  struct Args {
    std::string file;
    bool json = false;
    uint64_t budget = kDefaultByteBudget;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "inspect", "print an artifact's header, metadata, tensor table and byte breakdown, verifying every checksum");
  sub->add_option("file", args->file, "the artifact (.ptc, .ptq or .ptz)")->required();
  sub->add_flag("--json", args->json, "print one JSON object instead of text (default: text)");
  sub->add_option("--budget", args->budget, "byte budget the file size is compared with")->capture_default_str();
  sub->callback([args] {
    const auto summary = inspect_artifact(args->file, args->budget);
    const std::string text = args->json ? format_summary_json(summary) : format_summary_text(summary);
    std::fwrite(text.data(), 1, text.size(), stdout);
  });
}

}  // namespace ptool::cmd
