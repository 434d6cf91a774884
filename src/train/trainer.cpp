#include "src/train/trainer.h"

#include <chrono>
#include <cmath>

#include "formats/artifact.h"
#include "formats/error.h"
#include "formats/shard.h"
#include "src/eval/evaluate.h"
#include "src/model/model.h"
#include "src/ops/device.h"
#include "src/tokenizer.h"
#include "src/train/adam.h"
#include "src/train/checkpoint.h"
#include "src/train/muon.h"
#include "src/train/optimizer_step.h"
#include "src/train/param_store.h"
#include "src/train/schedule.h"
#include "src/train/token_stream.h"

namespace ptool::train {

using nlohmann::json;

#define PTOOL_OPTION_FIELDS(X)                                                                                  \
  X(steps) X(max_seconds) X(batch_tokens) X(seq_len) X(grad_accum) X(seed) X(matrix_lr) X(scalar_lr)           \
  X(tied_embed_lr) X(embed_lr) X(head_lr) X(muon_momentum) X(muon_momentum_start) X(muon_momentum_warmup)      \
  X(ns_steps) X(muon_row_normalize) X(muon_bf16) X(muon_wd) X(adam_wd) X(beta1) X(beta2) X(adam_eps) X(warmdown_iters)      \
  X(warmdown_frac) X(min_lr) X(grad_clip) X(ema_decay) X(swa_every) X(swa_start) X(qat_bits) X(qat_start)      \
  X(val_every) X(val_tokens) X(val_batch_seqs) X(log_every) X(checkpoint_every) X(deterministic_time) X(device)

json TrainOptions::to_json() const {
  json j;
#define X(f) j[#f] = f;
  PTOOL_OPTION_FIELDS(X)
#undef X
  return j;
}

TrainOptions TrainOptions::from_json(const json& j) {
  TrainOptions o;
#define X(f) if (j.contains(#f)) j.at(#f).get_to(o.f);
  PTOOL_OPTION_FIELDS(X)
#undef X
  return o;
}

namespace {

Group store_group(model::OptGroup g) {
  switch (g) {
    case model::OptGroup::embed: return Group::adam_embed;
    case model::OptGroup::head: return Group::adam_head;
    case model::OptGroup::matrix: return Group::muon;
    case model::OptGroup::scalar: return Group::adam_scalar;
  }
  return Group::frozen;
}

}  // namespace

ParamStore make_param_store(const model::ParamLayout& L) {
  ParamStore s(1);
  for (auto& spec : L.specs) {
    const Slice& sl = s.add(spec.name, spec.shape, store_group(spec.group));
    if (static_cast<int64_t>(sl.offset) != spec.offset) throw Error("internal: parameter store layout mismatch");
  }
  return s;
}

namespace {

CheckpointInfo info_of(const model::ModelConfig& config, const TrainOptions& opt, const TrainInputs& in,
                       const Tokenizer& tok) {
  CheckpointInfo info;
  info.config = config;
  info.options = opt;
  info.tokenizer_sha256 = tok.sha256();
  info.tokenizer_path = in.tokenizer_path;
  info.train_files = in.train_files;
  info.val_files = in.val_files;
  info.command_line = in.command_line;
  return info;
}

void validate_options(const TrainOptions& o, int64_t seq_len) {
  if (o.steps < 0) throw Error("--steps must be >= 0");
  if (o.grad_accum < 1) throw Error("--grad-accum must be >= 1");
  if (seq_len < 1) throw Error("--seq-len must be positive");
  if (o.batch_tokens % (o.grad_accum * seq_len) != 0 || o.batch_tokens <= 0)
    throw Error("--batch-tokens (" + std::to_string(o.batch_tokens) + ") must be a positive multiple of grad_accum x seq_len (" +
                std::to_string(o.grad_accum * seq_len) + ")");
  if (o.qat_bits != 0 && (o.qat_bits < 2 || o.qat_bits > 8)) throw Error("--qat-bits must be 0 (off) or 2..8");
  if (o.ema_decay < 0 || o.ema_decay >= 1) throw Error("--ema must be in [0, 1)");
}

}  // namespace

TrainResult train(const model::ModelConfig& config, const TrainOptions& opt, const TrainInputs& in,
                  const TrainCallbacks& cb) {
  using clock = std::chrono::steady_clock;
  const int64_t seq_len = opt.seq_len > 0 ? opt.seq_len : config.train_seq_len;
  validate_options(opt, seq_len);
  auto note = [&](const std::string& s) { if (cb.on_note) cb.on_note(s); };

  // Data.
  if (in.train_files.empty()) throw Error("no training shards given");
  std::vector<Shard> train_shards;
  std::vector<std::span<const uint16_t>> spans;
  for (auto& f : in.train_files) {
    train_shards.push_back(Shard::open(f));
    train_shards.back().check_vocab(static_cast<uint32_t>(config.vocab_size));
    spans.push_back(train_shards.back().tokens());
  }
  TokenStream stream(spans);
  std::vector<uint16_t> val;
  for (auto& f : in.val_files) {
    Shard s = Shard::open(f);
    s.check_vocab(static_cast<uint32_t>(config.vocab_size));
    val.insert(val.end(), s.tokens().begin(), s.tokens().end());
  }
  if (opt.val_tokens > 0 && static_cast<int64_t>(val.size()) > opt.val_tokens + 1) val.resize(opt.val_tokens + 1);
  Tokenizer tok = Tokenizer::load(in.tokenizer_path);
  if (tok.vocab_size() > static_cast<uint32_t>(config.vocab_size))
    throw Error("tokenizer has " + std::to_string(tok.vocab_size()) + " pieces but the model's vocab_size is " +
                std::to_string(config.vocab_size));
  const ByteLuts luts = build_byte_luts(tok, static_cast<uint32_t>(config.vocab_size));

  // Model and optimizer state.
  auto backend = make_backend(opt.device);
  model::Model<float> m(config, *backend);
  OptimizerState os(make_param_store(m.layout()), opt.ema_decay > 0, opt.swa_every, opt.swa_start);
  ParamStore& params = os.params;
  TrainState st;
  if (!in.resume_path.empty()) {
    st = load_checkpoint(in.resume_path, config, params, os.muon, os.adam, os.ema, os.swa);
    stream.restore(st.stream);
    note("resumed from " + in.resume_path + " at step " + std::to_string(st.step));
  } else {
    model::init_params(config, m.layout(), opt.seed, params.data());
    if (!os.ema.empty()) std::copy(params.data(), params.data() + params.size(), os.ema.begin());
  }
  // Uploads the weights; on a CUDA backend the whole optimizer state then lives on the device.
  const auto opt_step = make_optimizer_step(m, os);
  const CheckpointInfo info = info_of(config, opt, in, tok);
  auto save = [&](const float* final_weights) {  // the host state must be current (sync_to_host)
    save_checkpoint(in.out_path, info, st, params, os.muon, os.adam, os.ema, os.swa, final_weights);
  };

  TrainResult res;
  auto validate = [&](int64_t step) {
    if (val.size() < static_cast<size_t>(seq_len) + 1) return;
    auto r = eval::eval_standard(m, val, seq_len, luts, opt.val_batch_seqs);
    ValLog v{step, r.val_loss(), r.val_bpb()};
    res.val_curve.push_back(v);
    res.val_loss = v.val_loss;
    res.val_bpb = v.val_bpb;
    res.val_tokens = r.tokens;
    res.val_bytes = r.bytes;
    if (cb.on_val) cb.on_val(v);
  };

  const int64_t micro_tokens = opt.batch_tokens / opt.grad_accum;
  const int64_t rows = micro_tokens / seq_len;
  std::vector<int32_t> x(micro_tokens), y(micro_tokens);
  std::string last_good;  // path of the last checkpoint written
  double elapsed_ms = st.elapsed_ms;
  const int64_t start_step = st.step;
  for (int64_t step = start_step; step < opt.steps; ++step) {
    const auto t0 = clock::now();
    const double sched_ms = opt.deterministic_time ? 0.0 : elapsed_ms;
    double lr_mul;
    if (opt.warmdown_frac > 0)
      lr_mul = lr_mul_fraction(training_frac(step, sched_ms, opt.steps, opt.deterministic_time ? 0 : opt.max_seconds * 1000),
                               opt.warmdown_frac, opt.min_lr);
    else
      lr_mul = lr_mul_baseline(step, sched_ms, opt.steps, opt.warmdown_iters,
                               opt.deterministic_time ? 0 : opt.max_seconds * 1000);
    // QAT: the forward reads fake-quantized block matrices; the gradient passes straight through.
    const bool qat_on = opt.qat_bits > 0 && (opt.qat_start >= 1.0 || lr_mul < opt.qat_start);
    if (qat_on) {
      if (!st.qat_announced) {
        note("qat:enabled step:" + std::to_string(step) + " bits:" + std::to_string(opt.qat_bits));
        st.qat_announced = true;
      }
      m.set_forward_weights(opt_step->fake_quantized_weights(opt.qat_bits));
    }
    m.zero_grads();
    // The loss stays on the backend until the step's one read (the NaN check and the log need it).
    for (int64_t a = 0; a < opt.grad_accum; ++a) {
      stream.next_batch(opt.batch_tokens, seq_len, opt.grad_accum, 0, 1, x.data(), y.data());
      m.accumulate_gradients(x.data(), y.data(), rows, seq_len, 1.0f / static_cast<float>(opt.batch_tokens));
    }
    m.set_forward_weights(nullptr);
    const double loss = m.take_loss_sum() / static_cast<double>(opt.batch_tokens);
    if (!std::isfinite(loss)) {
      res.stopped_on_nan = true;
      throw Error("train loss is " + std::string(std::isnan(loss) ? "NaN" : "Inf") + " at step " +
                  std::to_string(step + 1) + "; training stopped; " +
                  (last_good.empty() ? std::string("no checkpoint was written yet")
                                     : "the last good checkpoint is " + last_good));
    }
    StepSettings ss;
    MuonConfig& mc = ss.muon;
    mc.lr = opt.matrix_lr * lr_mul;
    mc.momentum = muon_momentum_at(step, opt.muon_momentum_start, opt.muon_momentum, opt.muon_momentum_warmup);
    mc.weight_decay = opt.muon_wd;
    mc.row_normalize = opt.muon_row_normalize;
    mc.ns = NsConfig::quintic(opt.ns_steps);
    mc.bf16 = opt.muon_bf16;
    AdamConfig& ac = ss.adam;
    ac.beta1 = opt.beta1;
    ac.beta2 = opt.beta2;
    ac.eps = opt.adam_eps;
    const double embed_lr = config.tie_embeddings ? opt.tied_embed_lr : opt.embed_lr;
    ac.group(Group::adam_embed) = {true, embed_lr * lr_mul, opt.adam_wd, config.embed_bf16};
    ac.group(Group::adam_head) = {true, opt.head_lr * lr_mul, opt.adam_wd};
    ac.group(Group::adam_scalar) = {true, opt.scalar_lr * lr_mul, opt.adam_wd};
    ss.grad_clip = opt.grad_clip;
    ss.ema_decay = opt.ema_decay;
    ss.swa_take = opt.swa_every > 0 && os.swa.due(step + 1, lr_mul);
    opt_step->step(ss);

    const double step_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    elapsed_ms += step_ms;
    st.step = step + 1;
    st.elapsed_ms = elapsed_ms;
    st.stream = stream.state();
    res.losses.push_back(loss);
    res.final_train_loss = loss;
    res.steps_done = st.step;
    const bool last = st.step == opt.steps || (opt.max_seconds > 0 && elapsed_ms >= opt.max_seconds * 1000);
    if (cb.on_step && (st.step % std::max<int64_t>(1, opt.log_every) == 0 || last || st.step <= 2)) {
      const double avg = elapsed_ms / static_cast<double>(st.step - start_step);
      cb.on_step({st.step, opt.steps, loss, lr_mul, elapsed_ms, avg,
                  static_cast<double>(opt.batch_tokens) / (avg / 1000.0)});
    }
    if (opt.val_every > 0 && st.step % opt.val_every == 0 && !last) validate(st.step);
    if (opt.checkpoint_every > 0 && st.step % opt.checkpoint_every == 0 && !last && !in.out_path.empty()) {
      opt_step->sync_to_host();
      save(nullptr);
      last_good = in.out_path;
    }
    if (last) break;
  }
  res.train_seconds = elapsed_ms / 1000.0;

  // Final weights: the EMA or SWA average when enabled (the raw weights stay in the checkpoint for resume).
  opt_step->sync_to_host();
  std::vector<float> final_weights;
  if (!os.ema.empty()) {
    final_weights = os.ema;
    note("using EMA weights (decay " + std::to_string(opt.ema_decay) + ")");
  } else if (os.swa.count() > 0) {
    final_weights.resize(params.size());
    os.swa.average(final_weights);
    note("using the SWA average of " + std::to_string(os.swa.count()) + " checkpoints");
  }
  if (!final_weights.empty()) {
    model::round_bf16_tensors(config, m.layout(), final_weights.data());  // as loading them into bf16 tensors does
    m.load_params(final_weights.data());
  }
  validate(st.step);
  if (!in.out_path.empty()) save(final_weights.empty() ? nullptr : final_weights.data());
  return res;
}

}  // namespace ptool::train
