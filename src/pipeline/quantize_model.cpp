#include "src/pipeline/quantize_model.h"

#include "formats/error.h"
#include "formats/shard.h"
#include "src/model/calibrate.h"
#include "src/quant/quantizer.h"

namespace ptool::pipeline {

namespace {

bool rule_needs_hessian(const quant::Rule& r) {
  return r.action == quant::Action::quantize && (r.spec.gptq || r.spec.clip == quant::Clip::hsdclip);
}

model::HessianMap calibrate(const model::LoadedModel& lm, const CalibrationOptions& c, const Log& log) {
  auto be = make_cpu_backend<float>();
  model::Model<float> m(lm.config, *be);
  m.load_params(lm.weights.data());
  const int64_t L = c.seq_len > 0 ? c.seq_len : lm.config.train_seq_len;
  std::vector<uint16_t> tokens;
  if (c.generate_seqs > 0) {
    if (log) log("calibration: sampling " + std::to_string(c.generate_seqs) + " sequences of " + std::to_string(L) +
                 " tokens at temperature " + std::to_string(c.temperature));
    tokens = model::generate_calibration_tokens(m, c.generate_seqs, L, c.temperature, c.seed);
    const int64_t per_batch = c.batch_seqs * L;
    const int64_t batches = std::max<int64_t>(1, (static_cast<int64_t>(tokens.size()) - 1) / per_batch);
    return model::collect_hessians(m, tokens, L, std::min<int64_t>(c.batch_seqs, c.generate_seqs), batches);
  }
  if (c.files.empty())
    throw Error("these quantization rules need Hessians: give calibration shards (--calib GLOB) or --calib-generate N");
  const int64_t need = c.batches * c.batch_seqs * L + 1;
  for (auto& f : c.files) {
    Shard s = Shard::open(f);
    s.check_vocab(static_cast<uint32_t>(lm.config.vocab_size));
    auto t = s.tokens();
    tokens.insert(tokens.end(), t.begin(), t.begin() + std::min<int64_t>(t.size(), need - tokens.size()));
    if (static_cast<int64_t>(tokens.size()) >= need) break;
  }
  if (log) log("calibration: " + std::to_string(c.batches) + " batches of " + std::to_string(c.batch_seqs) + " x " +
               std::to_string(L) + " training tokens");
  return model::collect_hessians(m, tokens, L, c.batch_seqs, c.batches);
}

}  // namespace

bool needs_hessians(const model::LoadedModel& m, const quant::RuleSet& rules) {
  for (auto& s : model::make_layout(m.config).specs)
    if (rule_needs_hessian(quant::match_rule(rules, s.name, s.numel))) return true;
  return false;
}

QuantizeResult quantize_model(const model::LoadedModel& lm, const quant::RuleSet& rules,
                              const CalibrationOptions& calib, const Log& log) {
  const model::ParamLayout L = model::make_layout(lm.config);
  model::HessianMap hessians;
  if (needs_hessians(lm, rules)) hessians = calibrate(lm, calib, log);
  QuantizeResult res;
  res.artifact.stage = Stage::quantized;
  res.artifact.metadata = lm.metadata;
  res.artifact.metadata.erase("state");
  res.artifact.metadata.erase("train_options");
  nlohmann::json info = nlohmann::json::object();
  for (auto& s : L.specs) {
    std::span<const float> w(lm.weights.data() + s.offset, s.numel);
    std::span<const double> H;
    if (auto it = hessians.find(s.name); it != hessians.end()) H = it->second.H;
    auto qt = quant::quantize_by_rules(rules, s.name, s.shape, w, H, log);
    res.reports.push_back(quant::make_report(qt, w));
    res.est_bytes += res.reports.back().est_bytes;
    info[s.name] = qt.info;
    TensorRecord r = quant::to_record(qt);
    r.section = qt.coded() ? "codes" : "float";
    res.artifact.tensors.push_back(std::move(r));
  }
  res.artifact.metadata["quantization"] = {{"rules", rules.origin}, {"tensors", info}};
  return res;
}

}  // namespace ptool::pipeline
