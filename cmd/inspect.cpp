#include "cmd/commands.h"

namespace ptool::cmd {

void add_inspect(CLI::App& app) { add_not_built(app, "inspect", "print an artifact's header, metadata and tensor table", "issue #2"); }

}  // namespace ptool::cmd
