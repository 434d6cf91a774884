#include "src/pipeline/quantize_model.h"

#include <map>
#include <optional>

#include "formats/error.h"
#include "formats/shard.h"
#include "src/model/calibrate.h"
#include "src/pipeline/pack_model.h"
#include "src/ops/device.h"
#include "src/quant/budget.h"
#include "src/quant/quantizer.h"

namespace ptool::pipeline {

namespace {

bool rule_needs_hessian(const quant::Rule& r) {
  return r.action == quant::Action::quantize && (r.spec.gptq || r.spec.clip == quant::Clip::hsdclip);
}

model::HessianMap calibrate(const model::LoadedModel& lm, const CalibrationOptions& c, const Log& log) {
  auto be = make_backend(c.device);
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

bool fits_by_k(const quant::Rule& r) {
  return r.action == quant::Action::quantize && (r.spec.clip == quant::Clip::sdclip || r.spec.clip == quant::Clip::hsdclip);
}

// Chooses k per tensor group; returns the k of each fitted tensor by name.
// `target` is in estimated bytes (order-0 entropy) for the whole model.
std::map<std::string, double> fit_k(const model::LoadedModel& lm, const model::ParamLayout& L, const quant::RuleSet& rules,
                                    const model::HessianMap& hessians, const FitOptions& fit, double target,
                                    nlohmann::json& report, const Log& log) {
  std::vector<quant::BudgetTensor> tensors;
  double fixed_bytes = 0;  // tensors the fit does not touch
  for (auto& s : L.specs) {
    std::span<const float> w(lm.weights.data() + s.offset, s.numel);
    const quant::Rule& r = quant::match_rule(rules, s.name, s.numel);
    if (!fits_by_k(r) || s.shape.size() != 2) {
      std::span<const double> H;
      if (auto it = hessians.find(s.name); it != hessians.end()) H = it->second.H;
      fixed_bytes += quant::estimate_bytes(quant::quantize_by_rules(rules, s.name, s.shape, w, H));
      continue;
    }
    quant::BudgetTensor t;
    t.name = s.name;
    t.group = std::string(quant::class_name(quant::classify_param(s.name)));
    t.shape = s.shape;
    t.values = w;
    t.bits = r.spec.bits;
    if (auto it = hessians.find(s.name); it != hessians.end()) {
      double tr = 0;
      for (int64_t i = 0; i < it->second.cols; ++i) tr += it->second.H[i * it->second.cols + i];
      t.sensitivity = tr / static_cast<double>(it->second.cols);
    }
    tensors.push_back(t);
  }
  std::vector<quant::BudgetCandidate> cands;
  for (double k : quant::geometric_grid(fit.k_min, fit.k_max, fit.k_steps)) cands.push_back({0, k});
  const double budget = target - fixed_bytes;
  const std::string what = "--fit " + std::to_string(static_cast<int64_t>(fit.bytes));
  if (budget <= 0)
    throw Error(what + ": the tensors outside the fit already need about " +
                std::to_string(static_cast<int64_t>(fixed_bytes)) + " of the " + std::to_string(static_cast<int64_t>(target)) +
                " bytes available to the weights");
  auto res = quant::fit_to_budget(tensors, cands, budget, quant::entropy_size_estimator, log);
  if (!res.feasible)
    throw Error(what + " bytes is out of reach: even k = " + std::to_string(fit.k_max) + " needs " +
                std::to_string(static_cast<int64_t>(res.bytes + fixed_bytes)) + " estimated bytes of the " +
                std::to_string(static_cast<int64_t>(target)) + " available");
  std::map<std::string, double> group_k;
  report = {{"target_est_bytes", target}, {"fixed_bytes", fixed_bytes}, {"est_bytes", res.bytes + fixed_bytes},
            {"groups", nlohmann::json::array()}};
  for (auto& g : res.groups) {
    group_k[g.group] = g.candidate.k;
    report["groups"].push_back({{"group", g.group}, {"k", g.candidate.k}, {"est_bytes", g.bytes}, {"loss", g.loss}});
    if (log) log("fit: group " + g.group + " k " + std::to_string(g.candidate.k) + " est " + std::to_string(static_cast<int64_t>(g.bytes)) + " bytes");
  }
  std::map<std::string, double> by_name;
  for (auto& t : tensors) by_name[t.name] = group_k.at(t.group);
  return by_name;
}

}  // namespace

bool needs_hessians(const model::LoadedModel& m, const quant::RuleSet& rules) {
  for (auto& s : model::make_layout(m.config).specs)
    if (rule_needs_hessian(quant::match_rule(rules, s.name, s.numel))) return true;
  return false;
}

namespace {

QuantizeResult quantize_all(const model::LoadedModel& lm, const model::ParamLayout& L, const quant::RuleSet& rules,
                            const model::HessianMap& hessians, const std::map<std::string, double>& fitted_k,
                            const Log& log) {
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
    quant::QuantizedTensor qt;
    if (auto k = fitted_k.find(s.name); k != fitted_k.end()) {
      quant::QuantSpec spec = quant::match_rule(rules, s.name, s.numel).spec;
      spec.k = k->second;
      qt = quant::quantize_tensor(s.name, s.shape, w, spec, H, log);
    } else {
      qt = quant::quantize_by_rules(rules, s.name, s.shape, w, H, log);
    }
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

// Fit attempts (see FitOptions): each fits k to an estimate target, quantizes, packs and measures.
QuantizeResult fit_and_quantize(const model::LoadedModel& lm, const model::ParamLayout& L, const quant::RuleSet& rules,
                                const model::HessianMap& hessians, const FitOptions& fit, const Log& log) {
  const uint64_t budget = static_cast<uint64_t>(fit.bytes);
  const double goal = fit.bytes * (1 - fit.tolerance / 2);  // aim inside the tolerance band, not at its edge
  PackOptions po;
  po.codec = fit.codec;
  po.budget = budget;
  po.code_bytes = fit.code_bytes;
  double target = fit.bytes - static_cast<double>(fit.code_bytes);
  std::optional<QuantizeResult> best;
  uint64_t best_total = 0;
  nlohmann::json attempts = nlohmann::json::array();
  for (int attempt = 1; attempt <= fit.max_attempts; ++attempt) {
    nlohmann::json report;
    const auto k = fit_k(lm, L, rules, hessians, fit, target, report, log);
    QuantizeResult r = quantize_all(lm, L, rules, hessians, k, log);
    const uint64_t total = pack_model(r.artifact, po).total_bytes;
    report["packed_total_bytes"] = total;
    attempts.push_back(report);
    if (log)
      log("fit: attempt " + std::to_string(attempt) + ": estimate target " + std::to_string(static_cast<int64_t>(target)) +
          " -> packed (" + fit.codec + ") + code = " + std::to_string(total) + " of " + std::to_string(budget) + " bytes");
    if (total <= budget && (!best || total > best_total)) {
      best = std::move(r);
      best_total = total;
    }
    if (best && static_cast<double>(best_total) >= fit.bytes * (1 - fit.tolerance)) break;
    target *= goal / static_cast<double>(total);
  }
  if (!best)
    throw Error("--fit " + std::to_string(budget) + ": no attempt landed under the budget (last: " +
                attempts.back()["packed_total_bytes"].dump() + " bytes packed with " + fit.codec + " + code); " +
                "raise --fit or loosen the rules");
  best->fit = {{"budget", budget},         {"code_bytes", fit.code_bytes}, {"codec", fit.codec},
               {"packed_total_bytes", best_total}, {"attempts", attempts}};
  best->artifact.metadata["quantization"]["fit"] = best->fit;
  return std::move(*best);
}

}  // namespace

QuantizeResult quantize_model(const model::LoadedModel& lm, const quant::RuleSet& rules,
                              const CalibrationOptions& calib, const FitOptions& fit, const Log& log) {
  const model::ParamLayout L = model::make_layout(lm.config);
  model::HessianMap hessians;
  if (needs_hessians(lm, rules)) hessians = calibrate(lm, calib, log);
  if (fit.bytes > 0) return fit_and_quantize(lm, L, rules, hessians, fit, log);
  return quantize_all(lm, L, rules, hessians, {}, log);
}

}  // namespace ptool::pipeline
