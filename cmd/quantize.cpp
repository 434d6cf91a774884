#include "cmd/commands.h"

namespace ptool::cmd {

void add_quantize(CLI::App& app) { add_not_built(app, "quantize", "quantize a float checkpoint", "issue #4"); }

}  // namespace ptool::cmd
