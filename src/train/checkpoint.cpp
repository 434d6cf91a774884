#include "src/train/checkpoint.h"

#include <cstring>

#include "formats/artifact.h"
#include "formats/error.h"
#include "src/version.h"

namespace ptool::train {

using nlohmann::json;

namespace {

TensorRecord float_record(const std::string& name, const std::vector<int64_t>& shape, const float* p, size_t n,
                          const std::string& section) {
  TensorRecord r;
  r.name = name;
  r.shape = shape;
  r.dtype = DType::f32;
  r.section = section;
  r.data.resize(n * sizeof(float));
  if (n) std::memcpy(r.data.data(), p, n * sizeof(float));
  return r;
}

void read_floats(const Artifact& a, const std::string& name, float* out, size_t n) {
  const TensorRecord& r = a.at(name);
  if (r.dtype != DType::f32 || r.data.size() != n * sizeof(float))
    throw Error("checkpoint tensor '" + name + "' has the wrong type or size");
  if (n) std::memcpy(out, r.data.data(), n * sizeof(float));
}

}  // namespace

void save_checkpoint(const std::string& path, const CheckpointInfo& info, const TrainState& st,
                     const ParamStore& params, const Muon& muon, const Adam& adam, const std::vector<float>& ema,
                     const Swa& swa, const float* final_weights) {
  Artifact a;
  a.stage = Stage::checkpoint;
  a.metadata = {
      {"model", model::config_to_json(info.config)},
      {"train_options", info.options.to_json()},
      {"tokenizer", {{"sha256", info.tokenizer_sha256}, {"path", info.tokenizer_path}}},
      {"provenance",
       {{"ptool_version", version()},
        {"command_line", info.command_line},
        {"seed", info.options.seed},
        {"train_files", info.train_files},
        {"val_files", info.val_files}}},
      {"state",
       {{"step", st.step},
        {"elapsed_ms", st.elapsed_ms},
        {"qat_announced", st.qat_announced},
        {"adam_step", adam.step_count()},
        {"swa_count", swa.count()},
        {"stream",
         {{"shard_index", st.stream.shard_index},
          {"offset", st.stream.offset},
          {"num_shards", st.stream.num_shards},
          {"fingerprint", st.stream.fingerprint}}}}},
      {"param_count", params.num_params()}};
  const float* w = final_weights ? final_weights : params.data();
  for (auto& s : params.slices()) {
    a.tensors.push_back(float_record(s.name, s.shape, w + s.offset, s.numel, "weights"));
    if (final_weights)
      a.tensors.push_back(float_record("train/" + s.name, s.shape, params.data() + s.offset, s.numel, "train"));
  }
  const auto& groups = params.slices();
  for (size_t i = 0; i < groups.size(); ++i) {
    const Slice& s = groups[i];
    const Group g = params.slices()[i].group;
    if (g == Group::muon) {
      a.tensors.push_back(float_record("muon/" + s.name, s.shape, muon.momentum().data() + s.offset, s.numel,
                                       "optimizer"));
    } else if (g != Group::frozen) {
      a.tensors.push_back(float_record("adam_m/" + s.name, s.shape, adam.exp_avg().data() + s.offset, s.numel,
                                       "optimizer"));
      a.tensors.push_back(float_record("adam_v/" + s.name, s.shape, adam.exp_avg_sq().data() + s.offset, s.numel,
                                       "optimizer"));
    }
    if (!ema.empty()) a.tensors.push_back(float_record("ema/" + s.name, s.shape, ema.data() + s.offset, s.numel, "ema"));
    if (swa.count() > 0)
      a.tensors.push_back(float_record("swa/" + s.name, s.shape, swa.sum().data() + s.offset, s.numel, "swa"));
  }
  WriteOptions wo;
  wo.default_codec.codec = Codec::none;
  write_artifact(path, a, wo);
}

TrainState load_checkpoint(const std::string& path, const model::ModelConfig& config, ParamStore& params, Muon& muon,
                           Adam& adam, std::vector<float>& ema, Swa& swa) {
  Artifact a = read_artifact(path);
  if (a.stage != Stage::checkpoint) throw Error(path + ": not a training checkpoint (stage " +
                                                std::string(stage_name(a.stage)) + ")");
  try {
    if (a.metadata.at("model") != model::config_to_json(config))
      throw Error(path + ": checkpoint was trained with a different model config");
    const json& s = a.metadata.at("state");
    TrainState st;
    st.step = s.at("step").get<int64_t>();
    st.elapsed_ms = s.at("elapsed_ms").get<double>();
    st.qat_announced = s.at("qat_announced").get<bool>();
    const json& ss = s.at("stream");
    st.stream.shard_index = ss.at("shard_index").get<uint64_t>();
    st.stream.offset = ss.at("offset").get<uint64_t>();
    st.stream.num_shards = ss.at("num_shards").get<uint64_t>();
    st.stream.fingerprint = ss.at("fingerprint").get<uint64_t>();
    adam.set_step_count(s.at("adam_step").get<int64_t>());
    const bool has_raw = a.find("train/" + params.slices().front().name) != nullptr;
    std::vector<float> swa_sum;
    const int64_t swa_count = s.at("swa_count").get<int64_t>();
    if (swa_count > 0) swa_sum.resize(params.size());
    for (size_t i = 0; i < params.slices().size(); ++i) {
      const Slice& sl = params.slices()[i];
      read_floats(a, (has_raw ? "train/" : "") + sl.name, params.data() + sl.offset, sl.numel);
      const Group g = params.slices()[i].group;
      if (g == Group::muon) {
        read_floats(a, "muon/" + sl.name, muon.momentum().data() + sl.offset, sl.numel);
      } else if (g != Group::frozen) {
        read_floats(a, "adam_m/" + sl.name, adam.exp_avg().data() + sl.offset, sl.numel);
        read_floats(a, "adam_v/" + sl.name, adam.exp_avg_sq().data() + sl.offset, sl.numel);
      }
      if (!ema.empty()) read_floats(a, "ema/" + sl.name, ema.data() + sl.offset, sl.numel);
      if (swa_count > 0) read_floats(a, "swa/" + sl.name, swa_sum.data() + sl.offset, sl.numel);
    }
    if (swa_count > 0) swa.restore(swa_sum, swa_count);
    return st;
  } catch (const json::exception& e) {
    throw Error(path + ": checkpoint metadata is incomplete: " + e.what());
  }
}

}  // namespace ptool::train
