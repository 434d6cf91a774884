#include "cmd/commands.h"

namespace ptool::cmd {

void add_pack(CLI::App& app) { add_not_built(app, "pack", "compress a quantized model into a byte-budgeted artifact", "issue #4"); }

}  // namespace ptool::cmd
