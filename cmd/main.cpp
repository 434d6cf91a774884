#include <cstdio>
#include <exception>

#include "cmd/commands.h"
#include "formats/error.h"

namespace ptool::cmd {
std::vector<std::string>& invocation() {
  static std::vector<std::string> args;
  return args;
}
}  // namespace ptool::cmd

int main(int argc, char** argv) {
  ptool::cmd::invocation().assign(argv, argv + argc);
  CLI::App app{"ptool: train, quantize, pack and evaluate parameter-golf language models"};
  app.set_version_flag("--version", PTOOL_VERSION);
  app.require_subcommand(1);
  ptool::cmd::add_train(app);
  ptool::cmd::add_quantize(app);
  ptool::cmd::add_pack(app);
  ptool::cmd::add_eval(app);
  ptool::cmd::add_inspect(app);
  ptool::cmd::add_data(app);
  ptool::cmd::add_config(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ptool::Error& e) {
    std::fprintf(stderr, "ptool: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ptool: internal error: %s\n", e.what());
    return 1;
  }
  return 0;
}
