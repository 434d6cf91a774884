#include "cmd/commands.h"
#include "formats/error.h"

namespace ptool::cmd {

void add_not_built(CLI::App& app, const char* name, const char* description, const char* issue) {
  auto* sub = app.add_subcommand(name, std::string(description) + " (not built yet)");
  sub->allow_extras();
  sub->callback([name, issue] {
    throw Error(std::string("'") + name + "' is not built yet (" + issue + ")");
  });
}

}  // namespace ptool::cmd
