#include "cmd/commands.h"

namespace ptool::cmd {

void add_train(CLI::App& app) { add_not_built(app, "train", "train a model from token shards", "issue #3"); }

}  // namespace ptool::cmd
