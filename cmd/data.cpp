#include "cmd/commands.h"

namespace ptool::cmd {

void add_data(CLI::App& app) { add_not_built(app, "data", "token shards, tokenizers and statistics", "issue #2"); }

}  // namespace ptool::cmd
