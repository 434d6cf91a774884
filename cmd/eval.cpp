#include "cmd/commands.h"

namespace ptool::cmd {

void add_eval(CLI::App& app) { add_not_built(app, "eval", "evaluate val_loss and val_bpb", "issue #3"); }

}  // namespace ptool::cmd
