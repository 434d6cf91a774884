#include <cstdio>

#include "cmd/commands.h"
#include "formats/artifact.h"
#include "formats/error.h"
#include "formats/shard.h"
#include "src/ops/device.h"
#include "src/pipeline/quantize_model.h"
#include "src/quant/report.h"

namespace ptool::cmd {

namespace {

struct QuantizeArgs {
  std::string in, out, rules_file, preset = "baseline", calib_glob;
  bool dry_run = false, json = false;
  pipeline::CalibrationOptions calib;
  pipeline::FitOptions fit;
};

void run_quantize(QuantizeArgs& a) {
  if (a.out.empty() && !a.dry_run) throw Error("give --out FILE (or --dry-run)");
  const quant::RuleSet rules = a.rules_file.empty() ? quant::preset_rules(a.preset) : quant::load_rules(a.rules_file);
  if (!a.calib_glob.empty()) a.calib.files = expand_glob(a.calib_glob);
  auto lm = model::load_model(a.in);
  if (lm.stage != Stage::checkpoint) throw Error(a.in + " is already " + std::string(stage_name(lm.stage)));
  auto log = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  auto res = pipeline::quantize_model(lm, rules, a.calib, a.fit, log);
  if (a.json) {
    nlohmann::json j = {{"tensors", quant::report_json(res.reports)}, {"est_bytes", res.est_bytes}};
    if (!res.fit.is_null()) j["fit"] = res.fit;
    if (!a.dry_run) j["out"] = a.out;
    if (!a.dry_run) j["bytes"] = write_artifact(a.out, res.artifact);
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("%s", quant::format_report(res.reports).c_str());
  std::printf("estimated compressed model bytes: %.0f (rules: %s)\n", res.est_bytes, rules.origin.c_str());
  if (!a.dry_run) {
    const uint64_t n = write_artifact(a.out, res.artifact);
    std::printf("wrote %s (%llu bytes, quantized stage)\n", a.out.c_str(), static_cast<unsigned long long>(n));
  }
}

}  // namespace

void add_quantize(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  auto* c = app.add_subcommand("quantize", "quantize a float checkpoint (int8, int6 STE-matched, GPTQ, GPTQ-lite, SDClip)");
  c->add_option("in", a->in, "float checkpoint (from ptool train)")->required();
  c->add_option("--out", a->out, "quantized artifact to write");
  std::string presets;
  for (auto& n : quant::preset_names()) presets += (presets.empty() ? "" : ", ") + n;
  c->add_option("--preset", a->preset, "rule preset: " + presets)->capture_default_str();
  c->add_option("--rules", a->rules_file, "rules file (JSON, see src/quant/rules.h) instead of --preset");
  c->add_flag("--dry-run", a->dry_run, "print the per-tensor table (scheme, bits, MSE, estimated bytes), write nothing");
  c->add_flag("--json", a->json, "print the table as JSON");
  c->add_option("--fit", a->fit.bytes,
                "choose SDClip k per tensor group (embed/attn/mlp/other) so that the packed model plus the code "
                "bytes lands just under BYTES with the least Hessian-weighted error (0: off)")
      ->capture_default_str();
  c->add_option("--code-bytes", a->fit.code_bytes, "bytes of code that count against the --fit budget")
      ->capture_default_str();
  c->add_option("--fit-codec", a->fit.codec, "pack codec the fit measures with (pack --codec auto never exceeds it)")
      ->capture_default_str();
  c->add_option("--calib", a->calib_glob, "training shards for GPTQ Hessians (glob)");
  c->add_option("--calib-batches", a->calib.batches, "calibration batches")->capture_default_str();
  c->add_option("--calib-seq-len", a->calib.seq_len, "calibration sequence length (0: the model's)")
      ->capture_default_str();
  c->add_option("--calib-batch-seqs", a->calib.batch_seqs, "sequences per calibration batch")->capture_default_str();
  c->add_option("--calib-generate", a->calib.generate_seqs,
                "calibrate on N sequences the model samples itself instead of shards")
      ->capture_default_str();
  c->add_option("--calib-temperature", a->calib.temperature, "sampling temperature of --calib-generate")
      ->capture_default_str();
  c->add_option("--calib-seed", a->calib.seed, "sampling seed of --calib-generate")->capture_default_str();
  c->add_option("--device", a->calib.device, std::string("calibration backend: ") + kDeviceHelp)
      ->capture_default_str();
  c->callback([a] { run_quantize(*a); });
}

}  // namespace ptool::cmd
