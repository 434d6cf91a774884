// Training and sliding-window eval throughput of ptool on one device, measured the way bench/torch_twin.py
// measures its PyTorch twin (bench/TWIN.md), so the two JSON results compare key for key:
//   bench_train --preset baseline --device cuda:bf16 --json          (the twin's defaults: 524,288 tokens per
//                                                                      step in 8 micro-batches, 10 timed steps)
//   bench_train --preset tiny --device cpu --batch-tokens 1024 --grad-accum 2 --steps 2 --eval-tokens 4096
//   bench_train --preset baseline --set embed_bf16=false --device cuda:bf16 --json   (a preset with keys changed)
//
// A step is what `ptool train` does per step: zero gradients, grad_accum forward+backward passes over random
// tokens, then Muon + Adam through the trainer's OptimizerStep (src/train/optimizer_step.h) with ptool train's
// default learning rates. --optimizer auto picks it as the trainer does (on the GPU for a CUDA backend, where the
// twin's optimizer runs too); host forces the host one (gradients down, weights up; single-threaded, seconds
// per step at baseline size); none leaves it out. --muon-bf16 runs Newton-Schulz in bf16 like the twin.
// forward_backward_ms is always reported on its own.
// Step times are wall-clock with the device synchronized at the end of every step; ms_per_step is the median of
// the timed steps.
//
// FLOPs (identical to torch_twin.py's train_flops_per_token / eval_flops_per_token):
//   train FLOPs/token = 6 * N_exec + 6 * L_virtual * d * T
//   eval FLOPs/position = 2 * N_exec + 2 * L_virtual * d * T
//   N_exec = V * d + L_virtual * (2 d^2 + 2 kv_dim d + 2 hidden d)   (head + every block matrix per virtual layer)
// 6 FLOPs per weight per token (2 forward, 4 backward); attention QK^T and AV cost 12 L d T per token forward and
// backward, halved for the causal mask. MFU = FLOPs/token * tokens/s / peak (default 989 TFLOP/s, H100 SXM dense
// bf16, the twin's default). Eval counts every processed position (a sliding pass processes about L/S positions per
// scored target); ptool runs the short tail windows unpadded, the twin pads them, which it counts as processed.
//
// --profile runs the model on a ProfilingBackend (src/ops/profiling_backend.h): per op, the calls, time (CUDA
// events on a CUDA backend), share, estimated traffic and FLOPs of the timed training steps ("train_profile", the
// optimizer step as one op) and of the timed eval ("eval_profile"), printed as tables without --json. The events
// cost a little: take the throughput figures from a run without it.
//
// Memory (CUDA): peak bytes the backend held (its buffers and workspaces, like torch's max_memory_allocated),
// separately for training and eval, and the device's used memory at the end (cudaMemGetInfo, context included).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "src/eval/evaluate.h"
#include "src/model/config.h"
#include "src/model/layout.h"
#include "src/model/model.h"
#include "src/ops/device.h"
#include "src/ops/profiling_backend.h"
#include "src/train/optimizer_step.h"
#include "src/train/trainer.h"
#ifdef PTOOL_HAVE_CUDA
#include "kernels/cuda_backend.h"
#endif

using namespace ptool;
using clock_type = std::chrono::steady_clock;

namespace {

struct Args {
  std::string preset = "baseline", device = "cuda", optimizer = "auto";
  std::vector<std::string> sets;  // --set KEY=VALUE over the preset, as in ptool train
  int64_t batch_tokens = 524288, grad_accum = 8, seq_len = 0, steps = 10, warmup = 2;
  int64_t eval_tokens = 1048576, eval_stride = 64, eval_batch = 32;
  double peak_tflops = 989.0;
  bool muon_bf16 = false, no_train = false, no_eval = false, json = false, profile = false;
};

using Profiler = ProfilingBackend<float>;

nlohmann::json profile_json(const OpProfile& p) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [op, s] : p) j[op] = {{"calls", s.calls}, {"ms", s.ms}, {"bytes", s.bytes}, {"flops", s.flops}};
  return j;
}

double executed_matmul_params(const model::ModelConfig& c) {
  const double D = static_cast<double>(c.d_model), KV = static_cast<double>(c.kv_dim()),
               Hd = static_cast<double>(c.hidden());
  return static_cast<double>(c.vocab_size) * D + static_cast<double>(c.virtual_layers()) * (2 * D * D + 2 * KV * D + 2 * Hd * D);
}
double attention_flops(const model::ModelConfig& c, int64_t T) {
  return static_cast<double>(c.virtual_layers()) * static_cast<double>(c.d_model) * static_cast<double>(T);
}
double train_flops_per_token(const model::ModelConfig& c, int64_t T) {
  return 6 * executed_matmul_params(c) + 6 * attention_flops(c, T);
}
double eval_flops_per_token(const model::ModelConfig& c, int64_t T) {
  return 2 * executed_matmul_params(c) + 2 * attention_flops(c, T);
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

void sync(Backend<float>& be) {
#ifdef PTOOL_HAVE_CUDA
  cuda_synchronize(be);
#else
  (void)be;
#endif
}

// Peak bytes the backend held since the last call (and restarts the count); null off CUDA.
nlohmann::json take_peak_gb(Backend<float>& be) {
#ifdef PTOOL_HAVE_CUDA
  if (is_cuda_backend(be)) {
    const double gb = static_cast<double>(cuda_memory(be).peak_bytes) / 1e9;
    cuda_reset_peak_memory(be);
    return gb;
  }
#endif
  (void)be;
  return nullptr;
}

nlohmann::json device_name(Backend<float>& be) {
#ifdef PTOOL_HAVE_CUDA
  if (is_cuda_backend(be)) return cuda_device_name(0);
#endif
  return be.name();
}

// Where the optimizer ran: "device", "host" or "none".
std::string optimizer_name(const Args& a, Backend<float>& be) {
  if (a.optimizer == "none" || a.optimizer == "host") return a.optimizer;
#ifdef PTOOL_HAVE_CUDA
  if (is_cuda_backend(be)) return "device";
#endif
  (void)be;
  return "host";
}

std::vector<int32_t> random_tokens(std::mt19937& rng, size_t n, int64_t V) {
  std::vector<int32_t> t(n);
  for (auto& v : t) v = static_cast<int32_t>(rng() % static_cast<uint32_t>(V));
  return t;
}

void bench_training(const Args& a, const model::ModelConfig& cfg, model::Model<float>& m, Backend<float>& be,
                    Profiler* prof, int64_t T, nlohmann::json& res) {
  if (a.batch_tokens % (a.grad_accum * T) != 0)
    throw std::runtime_error("--batch-tokens must be a multiple of --grad-accum x seq_len");
  const int64_t rows = a.batch_tokens / a.grad_accum / T;
  train::OptimizerState os(train::make_param_store(m.layout()), false, 0, 0.0);
  model::init_params(cfg, m.layout(), 1, os.params.data());
  std::unique_ptr<train::OptimizerStep> opt;  // uploads the weights
  if (a.optimizer == "host") {
    opt = train::make_host_optimizer_step(m, os);
  } else {
    opt = train::make_optimizer_step(m, os);
  }
  train::StepSettings ss;  // ptool train's defaults, lr multiplier 1
  ss.muon.bf16 = a.muon_bf16;
  ss.adam.group(train::Group::adam_embed) = {true, cfg.tie_embeddings ? 0.05 : 0.6, 0.0};
  ss.adam.group(train::Group::adam_head) = {true, 0.008, 0.0};
  ss.adam.group(train::Group::adam_scalar) = {true, 0.04, 0.0};
  std::mt19937 rng(3);
  std::vector<std::vector<int32_t>> xs, ys;  // one random micro-batch per accumulation slot
  for (int64_t i = 0; i < a.grad_accum; ++i) {
    xs.push_back(random_tokens(rng, static_cast<size_t>(rows * T), cfg.vocab_size));
    ys.push_back(random_tokens(rng, static_cast<size_t>(rows * T), cfg.vocab_size));
  }
  std::vector<double> step_ms, fb_ms;
  double first_loss = 0, loss = 0;
  take_peak_gb(be);
  const auto w0 = clock_type::now();
  for (int64_t s = 0; s < a.warmup + a.steps; ++s) {
    if (prof && s == a.warmup) prof->reset();
    const auto t0 = clock_type::now();
    m.zero_grads();
    for (int64_t i = 0; i < a.grad_accum; ++i)  // as the trainer: the loss is read once per step
      m.accumulate_gradients(xs[i].data(), ys[i].data(), rows, T, 1.0f / static_cast<float>(a.batch_tokens));
    const double loss_sum = m.take_loss_sum();
    const auto t1 = clock_type::now();
    if (a.optimizer != "none") {
      if (prof)
        prof->time_region("optimizer step", [&] { opt->step(ss); });
      else
        opt->step(ss);
      sync(be);
    }
    loss = loss_sum / static_cast<double>(a.batch_tokens);
    if (s == 0) first_loss = loss;
    if (s == a.warmup - 1) res["warmup_s"] = seconds_since(w0);
    if (s < a.warmup) continue;
    step_ms.push_back(seconds_since(t0) * 1e3);
    fb_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  const double ms = median(step_ms), tok_s = static_cast<double>(a.batch_tokens) / (ms / 1e3);
  const double fpt = train_flops_per_token(cfg, T);
  res.update({{"batch_tokens", a.batch_tokens}, {"grad_accum", a.grad_accum}, {"micro_batch", rows},
              {"steps", a.steps}, {"warmup", a.warmup}, {"ms_per_step", ms}, {"step_ms_all", step_ms},
              {"forward_backward_ms", median(fb_ms)}, {"optimizer_ms", ms - median(fb_ms)}, {"optimizer", optimizer_name(a, be)},
              {"muon_bf16", a.muon_bf16},
              {"tokens_per_s", tok_s}, {"forward_backward_tokens_per_s", a.batch_tokens / (median(fb_ms) / 1e3)},
              {"mfu", fpt * tok_s / (a.peak_tflops * 1e12)}, {"achieved_tflops", fpt * tok_s / 1e12},
              {"train_flops_per_token", fpt}, {"first_loss", first_loss}, {"final_loss", loss},
              {"train_peak_mem_gb", take_peak_gb(be)}});
  if (prof) res["train_profile"] = profile_json(prof->profile());
}

void bench_eval(const Args& a, const model::ModelConfig& cfg, model::Model<float>& m, Backend<float>& be,
                Profiler* prof, int64_t L, nlohmann::json& res) {
  std::mt19937 rng(5);
  std::vector<uint16_t> tokens(static_cast<size_t>(a.eval_tokens + 1));
  for (auto& t : tokens) t = static_cast<uint16_t>(rng() % static_cast<uint32_t>(cfg.vocab_size));
  ByteLuts luts;  // one byte per token: bpb is not the point here
  luts.base_bytes.assign(static_cast<size_t>(cfg.vocab_size), 1);
  luts.has_leading_space.assign(static_cast<size_t>(cfg.vocab_size), 0);
  luts.is_boundary.assign(static_cast<size_t>(cfg.vocab_size), 0);
  // Warm-up (arena, plans) on two batches of windows, untimed, as the twin does.
  const size_t warm = std::min(tokens.size(), static_cast<size_t>(L + 2 * a.eval_batch * a.eval_stride + 1));
  eval::eval_sliding(m, std::span(tokens.data(), warm), L, a.eval_stride, luts, a.eval_batch);
  sync(be);
  take_peak_gb(be);
  if (prof) prof->reset();
  const auto t0 = clock_type::now();
  const auto r = eval::eval_sliding(m, tokens, L, a.eval_stride, luts, a.eval_batch);
  sync(be);
  const double s = seconds_since(t0);
  double processed = 0;
  for (const auto& w : eval::sliding_windows(a.eval_tokens, L, a.eval_stride)) processed += static_cast<double>(w.len);
  res.update({{"eval_tokens", r.tokens}, {"eval_stride", a.eval_stride}, {"eval_batch_windows", a.eval_batch},
              {"eval_s", s}, {"eval_tokens_per_s", static_cast<double>(r.tokens) / s},
              {"eval_processed_tokens_per_s", processed / s},
              {"eval_mfu", eval_flops_per_token(cfg, L) * processed / s / (a.peak_tflops * 1e12)},
              {"eval_loss", r.val_loss()}, {"eval_peak_mem_gb", take_peak_gb(be)}});
  if (prof) res["eval_profile"] = profile_json(prof->profile());
}

std::unique_ptr<OpTimer> op_timer_for(Backend<float>& be) {
#ifdef PTOOL_HAVE_CUDA
  if (is_cuda_backend(be)) return make_cuda_op_timer(be);
#endif
  return make_wall_clock_timer();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ptool training and sliding-window eval throughput (tokens/s, ms/step, MFU, peak memory)"};
  Args a;
  app.add_option("--preset", a.preset, "model preset")->capture_default_str();
  app.add_option("--set", a.sets, "override one model key of the preset, KEY=VALUE, as ptool train's --set "
                 "(e.g. --set embed_bf16=false: the baseline with an fp32 embedding and residual stream)")
      ->allow_extra_args(false);
  app.add_option("--device", a.device, kDeviceHelp)->capture_default_str();
  app.add_option("--batch-tokens", a.batch_tokens, "tokens per optimizer step")->capture_default_str();
  app.add_option("--grad-accum", a.grad_accum, "micro-batches per step")->capture_default_str();
  app.add_option("--seq-len", a.seq_len, "0: the preset's train_seq_len")->capture_default_str();
  app.add_option("--steps", a.steps, "timed steps")->capture_default_str();
  app.add_option("--warmup", a.warmup, "untimed steps first")->capture_default_str();
  app.add_option("--eval-tokens", a.eval_tokens, "targets scored by the sliding-window eval")->capture_default_str();
  app.add_option("--eval-stride", a.eval_stride, "sliding-window stride")->capture_default_str();
  app.add_option("--eval-batch", a.eval_batch, "windows per forward")->capture_default_str();
  app.add_option("--optimizer", a.optimizer,
                 "auto: Muon + Adam where ptool train runs them (the GPU for cuda); host; none: fwd+bwd only")
      ->check(CLI::IsMember({"auto", "host", "none"}))
      ->capture_default_str();
  app.add_flag("--muon-bf16", a.muon_bf16, "Newton-Schulz in bf16, as the twin and the reference do");
  app.add_option("--peak-tflops", a.peak_tflops, "dense peak for MFU (H100 SXM bf16: 989)")->capture_default_str();
  app.add_flag("--no-train", a.no_train, "skip the training benchmark");
  app.add_flag("--no-eval", a.no_eval, "skip the eval benchmark");
  app.add_flag("--json", a.json, "print one JSON object");
  app.add_flag("--profile", a.profile, "time every op (per-op tables; the JSON gets train_profile, eval_profile)");
  CLI11_PARSE(app, argc, argv);
  try {
    if (a.steps < 1 || a.warmup < 0 || a.grad_accum < 1 || a.eval_tokens < 1 || a.eval_batch < 1)
      throw std::runtime_error("--steps, --grad-accum, --eval-tokens and --eval-batch must be positive");
    nlohmann::json cj = model::config_to_json(model::preset(a.preset));
    model::apply_config_settings(cj, a.sets);
    const auto cfg = model::config_from_json(cj);
    const int64_t T = a.seq_len > 0 ? a.seq_len : cfg.train_seq_len;
    auto be = make_backend(a.device);
    std::unique_ptr<Profiler> prof;
    if (a.profile) prof = std::make_unique<Profiler>(*be, op_timer_for(*be));
    Backend<float>& run_on = prof ? static_cast<Backend<float>&>(*prof) : *be;
    model::Model<float> m(cfg, run_on);
    nlohmann::json res = {{"preset", a.preset}, {"sets", a.sets}, {"device", a.device},
                          {"device_name", device_name(*be)}, {"params", m.param_count()},
                          {"executed_matmul_params", executed_matmul_params(cfg)},
                          {"virtual_layers", cfg.virtual_layers()}, {"seq_len", T}, {"peak_tflops", a.peak_tflops}};
    if (!a.no_train) bench_training(a, cfg, m, *be, prof.get(), T, res);
    std::string train_table;
    if (prof && !a.no_train) train_table = format_profile(prof->profile());
    if (!a.no_eval) bench_eval(a, cfg, m, *be, prof.get(), T, res);
#ifdef PTOOL_HAVE_CUDA
    if (is_cuda_backend(*be)) res["device_used_gb_at_end"] = static_cast<double>(cuda_device_used_bytes(0)) / 1e9;
#endif
    if (a.json) {
      std::printf("%s\n", res.dump().c_str());
      return 0;
    }
    std::printf("%s on %s: %lld params, %lld virtual layers, T %lld\n", a.preset.c_str(), a.device.c_str(),
                static_cast<long long>(m.param_count()), static_cast<long long>(cfg.virtual_layers()),
                static_cast<long long>(T));
    if (!a.no_train)
      std::printf("  train: %.2f ms/step (fwd+bwd %.2f, optimizer %.2f), %.0f tokens/s, MFU %.2f%%, loss %.4f -> %.4f\n",
                  res["ms_per_step"].get<double>(), res["forward_backward_ms"].get<double>(),
                  res["optimizer_ms"].get<double>(), res["tokens_per_s"].get<double>(),
                  100 * res["mfu"].get<double>(), res["first_loss"].get<double>(), res["final_loss"].get<double>());
    if (!a.no_eval)
      std::printf("  eval (stride %lld): %.0f scored tokens/s (%.0f processed/s, MFU %.2f%%), loss %.4f\n",
                  static_cast<long long>(a.eval_stride), res["eval_tokens_per_s"].get<double>(),
                  res["eval_processed_tokens_per_s"].get<double>(), 100 * res["eval_mfu"].get<double>(),
                  res["eval_loss"].get<double>());
    for (const char* k : {"train_peak_mem_gb", "eval_peak_mem_gb", "device_used_gb_at_end"})
      if (res.contains(k) && res[k].is_number()) std::printf("  %s: %.2f\n", k, res[k].get<double>());
    if (!train_table.empty())
      std::printf("\nprofile of the %lld timed training steps:\n%s", static_cast<long long>(a.steps),
                  train_table.c_str());
    if (prof && !a.no_eval) std::printf("\nprofile of the timed eval:\n%s", format_profile(prof->profile()).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
}
