// Each subcommand lives in its own file and registers itself on the root app.
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace ptool::cmd {

void add_train(CLI::App& app);
void add_quantize(CLI::App& app);
void add_pack(CLI::App& app);
void add_eval(CLI::App& app);
void add_inspect(CLI::App& app);
void add_data(CLI::App& app);
void add_config(CLI::App& app);

// The command line ptool was started with (recorded as provenance in artifacts).
std::vector<std::string>& invocation();

}  // namespace ptool::cmd
