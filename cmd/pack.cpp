#include <cstdio>
#include <filesystem>

#include "cmd/commands.h"
#include "formats/artifact.h"
#include "formats/atomic_file.h"
#include "formats/error.h"
#include "src/pipeline/pack_model.h"

namespace ptool::cmd {

namespace {

struct PackArgs {
  std::string in, out, code_file;
  bool json = false;
  pipeline::PackOptions opt;
};

void run_pack(PackArgs& a) {
  if (!a.code_file.empty()) {
    if (a.opt.code_bytes != 0) throw Error("give --code-bytes or --code, not both");
    std::error_code ec;
    a.opt.code_bytes = std::filesystem::file_size(a.code_file, ec);
    if (ec) throw Error("cannot read the size of --code " + a.code_file + ": " + ec.message());
  }
  const Artifact q = read_artifact(a.in);
  const auto r = pipeline::pack_model(q, a.opt);
  if (a.json) {
    nlohmann::json secs = nlohmann::json::array();
    for (auto& s : r.sections)
      secs.push_back({{"section", s.name}, {"codec", s.codec}, {"shuffle", s.shuffle}, {"tensors", s.tensors},
                      {"raw_bytes", s.raw_bytes}, {"stored_bytes", s.stored_bytes}});
    nlohmann::json j = {{"sections", secs},          {"file_bytes", r.bytes.size()}, {"code_bytes", a.opt.code_bytes},
                        {"total_bytes", r.total_bytes}, {"budget", a.opt.budget},    {"fits", r.fits}};
    if (r.fits) j["out"] = a.out;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%-14s %-7s %7s %8s %12s %12s\n", "section", "codec", "shuffle", "tensors", "raw", "stored");
    for (auto& s : r.sections)
      std::printf("%-14s %-7s %7d %8lld %12llu %12llu\n", s.name.c_str(), s.codec.c_str(), s.shuffle,
                  static_cast<long long>(s.tensors), static_cast<unsigned long long>(s.raw_bytes),
                  static_cast<unsigned long long>(s.stored_bytes));
    std::printf("file %zu + code %llu = %llu bytes of budget %llu (%s)\n", r.bytes.size(),
                static_cast<unsigned long long>(a.opt.code_bytes), static_cast<unsigned long long>(r.total_bytes),
                static_cast<unsigned long long>(a.opt.budget), r.fits ? "fits" : "OVER BUDGET");
  }
  if (!r.fits)
    throw Error("packed artifact is " + std::to_string(r.total_bytes - a.opt.budget) + " bytes over the budget of " +
                std::to_string(a.opt.budget) + "; nothing was written");
  write_file_atomic(a.out, r.bytes);
}

}  // namespace

void add_pack(CLI::App& app) {
  auto a = std::make_shared<PackArgs>();
  auto* c = app.add_subcommand("pack", "compress a quantized model into the submission artifact under a byte budget");
  c->add_option("in", a->in, "quantized artifact (from ptool quantize)")->required();
  c->add_option("--out", a->out, "packed artifact to write")->required();
  c->add_option("--codec", a->opt.codec,
                "zlib, zstd, brotli, arith (ptool's entropy coder for int8 codes; float sections get brotli) or "
                "auto (smallest per section)")
      ->capture_default_str();
  c->add_option("--level", a->opt.level, "codec level (-1: maximum: zlib 9, zstd 22, brotli 11 with a 24-bit window)")
      ->capture_default_str();
  c->add_option("--budget", a->opt.budget, "byte budget for file + code")->capture_default_str();
  c->add_option("--code-bytes", a->opt.code_bytes, "bytes of code that count against the budget")
      ->capture_default_str();
  c->add_option("--code", a->code_file, "a file whose size counts against the budget (instead of --code-bytes)");
  c->add_flag("--json", a->json, "print one JSON report");
  c->callback([a] { run_pack(*a); });
}

}  // namespace ptool::cmd
