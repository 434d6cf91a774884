// bench_entropy: ptool's entropy codec (formats/entropy_codec.h) against zlib-9, zstd-22, brotli-11
// (lgwin 24) and xz -9e on quantized int8 weight codes, per tensor group and in total, next to the
// sum over tensors of each tensor's order-0 entropy.
//
// Input (one of):
//   (default)          synthetic codes of the baseline model (src/synthetic_codes.h), --preset, --seed
//   --raw FILE.json    a JSON list of {"name", "rows", "cols"} (or {"bin": path, "tensors": [...]});
//                      the int8 codes, concatenated row-major in list order, are in FILE.bin (or "bin")
//   --artifact FILE    a ptool artifact (formats/artifact.h): every tensor of dtype i8 (2-D, or 1-D as 1 x n)
// --write-raw STEM writes the tensors used as STEM.json + STEM.bin and continues.
//
// The byte codecs compress each group's tensors concatenated (as the per-group lrzip record does), in
// three layouts: "raw" (row-major int8), "transposed" (each tensor column-major) and "shuffle2" (the
// raw group stream byte-shuffled with stride 2, as BSHF does to a whole torch.save blob). The order-0
// entropy does not depend on the layout. ptool's codec codes each tensor on its own (self-describing
// streams, shape included), so its total is a fair per-tensor sum.
#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#if defined(PTOOL_HAVE_LZMA)
#include <lzma.h>
#endif

#include "formats/artifact.h"
#include "src/quant/quantized_tensor.h"
#include "formats/codec.h"
#include "formats/entropy_codec.h"
#include "formats/error.h"
#include "src/synthetic_codes.h"

namespace {

using ptool::Error;

struct Tensor {
  std::string name, group;
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> codes;
};

double wall_now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
double thread_cpu_now() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// "blocks.3.attn.c_q.weight" -> "attn.c_q"; "tok_emb.weight" -> "tok_emb"; a trailing ".q" is dropped too.
std::string group_of(const std::string& name) {
  std::string s = name;
  for (const char* suffix : {".weight.q", ".q", ".weight"})
    if (s.size() > std::strlen(suffix) && s.ends_with(suffix)) {
      s.resize(s.size() - std::strlen(suffix));
      break;
    }
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find('.', i);
    if (j == std::string::npos) j = s.size();
    const std::string part = s.substr(i, j - i);
    const bool numeric =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    const bool container = part == "blocks" || part == "layers" || part == "h";
    if (!numeric && !container) out += (out.empty() ? "" : ".") + part;
    i = j + 1;
  }
  return out.empty() ? name : out;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open " + path);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::vector<Tensor> load_raw(const std::string& json_path) {
  nlohmann::json j;
  try {
    std::ifstream f(json_path);
    if (!f) throw Error("cannot open " + json_path);
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw Error(json_path + ": " + e.what());
  }
  std::filesystem::path bin = std::filesystem::path(json_path).replace_extension(".bin");
  nlohmann::json list = j;
  if (j.is_object()) {
    if (j.contains("bin")) {
      bin = std::filesystem::path(j.at("bin").get<std::string>());
      if (bin.is_relative()) bin = std::filesystem::path(json_path).parent_path() / bin;
    }
    list = j.at("tensors");
  }
  if (!list.is_array()) throw Error(json_path + ": expected a list of {name, rows, cols}");
  const std::vector<uint8_t> data = read_file(bin.string());
  std::vector<Tensor> out;
  size_t off = 0;
  for (const auto& e : list) {
    Tensor t;
    t.name = e.at("name").get<std::string>();
    t.rows = e.at("rows").get<int64_t>();
    t.cols = e.at("cols").get<int64_t>();
    t.group = e.contains("group") ? e.at("group").get<std::string>() : group_of(t.name);
    if (t.rows < 0 || t.cols < 0 || (t.rows > 0 && t.cols > (int64_t{1} << 40) / t.rows))
      throw Error(json_path + ": bad shape for " + t.name);
    const size_t n = static_cast<size_t>(t.rows * t.cols);
    if (n > data.size() - off) throw Error(bin.string() + " is too short for " + t.name);
    t.codes.assign(reinterpret_cast<const int8_t*>(data.data() + off),
                   reinterpret_cast<const int8_t*>(data.data() + off + n));
    off += n;
    out.push_back(std::move(t));
  }
  if (off != data.size())
    throw Error(bin.string() + " has " + std::to_string(data.size() - off) + " bytes beyond the listed tensors");
  return out;
}

// The int8 codes of every coded tensor of a quantized or packed artifact (their scales are left out).
std::vector<Tensor> load_artifact(const std::string& path) {
  const ptool::Artifact a = ptool::read_artifact(path);
  std::vector<Tensor> out;
  for (const auto& r : a.tensors) {
    if (r.scheme.empty() || r.shape.empty() || r.shape.size() > 2) continue;
    ptool::quant::QuantizedTensor q = ptool::quant::from_record(r);
    if (!q.coded()) continue;
    Tensor t;
    t.name = r.name;
    t.group = group_of(r.name);
    t.rows = r.shape.size() == 2 ? r.shape[0] : 1;
    t.cols = r.shape.back();
    t.codes = std::move(q.codes);
    out.push_back(std::move(t));
  }
  if (out.empty()) throw Error(path + ": no quantized tensors");
  return out;
}

void write_raw(const std::string& stem, const std::vector<Tensor>& ts) {
  nlohmann::json list = nlohmann::json::array();
  std::ofstream bin(stem + ".bin", std::ios::binary);
  for (const auto& t : ts) {
    list.push_back({{"name", t.name}, {"rows", t.rows}, {"cols", t.cols}, {"group", t.group}});
    bin.write(reinterpret_cast<const char*>(t.codes.data()), static_cast<std::streamsize>(t.codes.size()));
  }
  std::ofstream(stem + ".json") << list.dump(1) << "\n";
  if (!bin) throw Error("cannot write " + stem + ".bin");
}

double order0_bytes(const std::vector<int8_t>& codes) {
  size_t hist[256] = {};
  for (int8_t q : codes) ++hist[static_cast<uint8_t>(q)];
  double bits = 0;
  const double n = static_cast<double>(codes.size());
  for (size_t c : hist)
    if (c) bits -= static_cast<double>(c) * std::log2(static_cast<double>(c) / n);
  return bits / 8;
}

// xz -9e: liblzma when the build links it (PTOOL_HAVE_LZMA), else the xz program on a temp file.
std::optional<size_t> xz_size(const std::vector<uint8_t>& raw) {
#if defined(PTOOL_HAVE_LZMA)
  std::vector<uint8_t> out(lzma_stream_buffer_bound(raw.size()));
  size_t pos = 0;
  if (lzma_easy_buffer_encode(9 | LZMA_PRESET_EXTREME, LZMA_CHECK_CRC64, nullptr, raw.data(), raw.size(), out.data(),
                              &pos, out.size()) != LZMA_OK)
    return std::nullopt;
  return pos;
#else
  static const bool have_xz = std::system("xz --version >/dev/null 2>&1") == 0;
  if (!have_xz) return std::nullopt;
  char tmpl[] = "/tmp/bench_entropy_XXXXXX";
  const int fd = mkstemp(tmpl);
  if (fd < 0) return std::nullopt;
  const std::string in = tmpl, out = in + ".xz";
  size_t off = 0;
  while (off < raw.size()) {
    const ssize_t w = write(fd, raw.data() + off, raw.size() - off);
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
  close(fd);
  std::optional<size_t> size;
  if (off == raw.size() && std::system(("xz -9e -T1 -c '" + in + "' > '" + out + "'").c_str()) == 0)
    size = static_cast<size_t>(std::filesystem::file_size(out));
  std::filesystem::remove(in);
  std::filesystem::remove(out);
  return size;
#endif
}

const std::vector<std::string> kCodecs = {"zlib-9", "zstd-22", "brotli-11", "xz-9e"};

std::optional<size_t> compressed_size(const std::string& codec, const std::vector<uint8_t>& raw) {
  ptool::CodecOptions o;
  if (codec == "zlib-9")
    o.codec = ptool::Codec::zlib, o.level = 9;
  else if (codec == "zstd-22")
    o.codec = ptool::Codec::zstd, o.level = 22;
  else if (codec == "brotli-11")
    o.codec = ptool::Codec::brotli, o.level = 11, o.window_log = 24;
  else
    return xz_size(raw);
  return ptool::compress(raw, o).size();
}

std::vector<uint8_t> layout_bytes(const std::string& layout, const std::vector<const Tensor*>& ts) {
  std::vector<uint8_t> out;
  for (const Tensor* t : ts) {
    const auto* p = reinterpret_cast<const uint8_t*>(t->codes.data());
    if (layout == "transposed") {
      for (int64_t c = 0; c < t->cols; ++c)
        for (int64_t r = 0; r < t->rows; ++r) out.push_back(p[r * t->cols + c]);
    } else {
      out.insert(out.end(), p, p + t->codes.size());
    }
  }
  if (layout == "shuffle2") {
    std::vector<uint8_t> s;
    s.reserve(out.size());
    for (size_t start = 0; start < 2; ++start)
      for (size_t i = start; i < out.size(); i += 2) s.push_back(out[i]);
    out.swap(s);
  }
  return out;
}

// Runs jobs on `threads` workers.
void run_jobs(std::vector<std::function<void()>>& jobs, int threads) {
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  std::exception_ptr failure;
  std::mutex mu;
  for (int i = 0; i < std::max(threads, 1); ++i)
    pool.emplace_back([&] {
      for (size_t j; (j = next++) < jobs.size();) {
        try {
          jobs[j]();
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu);
          if (!failure) failure = std::current_exception();
        }
      }
    });
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

struct GroupResult {
  std::string name;
  int tensors = 0;
  uint64_t codes = 0;
  double h0 = 0;
  uint64_t ptool = 0;
  std::map<std::string, std::map<std::string, std::optional<size_t>>> sizes;  // layout -> codec -> bytes
};

std::string fmt_size(const std::optional<size_t>& s) { return s ? std::to_string(*s) : "-"; }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Benchmark ptool's entropy codec for int8 weight codes against zlib/zstd/brotli/xz"};
  std::string preset = "default", raw_json, artifact, write_stem;
  uint64_t seed = 1234;
  int layers = 9, threads = 2, repeats = 1;
  bool json = false, no_baselines = false, no_xz = false;
  std::vector<std::string> layouts = {"raw", "transposed", "shuffle2"};
  int mode = -1;
  app.add_option("--preset", preset, "synthetic preset: iid, default or strong")->capture_default_str();
  app.add_option("--seed", seed, "synthetic seed")->capture_default_str();
  app.add_option("--layers", layers, "synthetic model blocks")->capture_default_str();
  app.add_option("--raw", raw_json, "JSON list of {name, rows, cols}; codes in the .bin of the same stem");
  app.add_option("--artifact", artifact, "ptool artifact: its int8 tensors are benchmarked");
  app.add_option("--write-raw", write_stem, "also write the tensors as STEM.json + STEM.bin");
  app.add_option("--layouts", layouts, "layouts for the byte codecs: raw, transposed, shuffle2")->capture_default_str();
  app.add_option("--threads", threads, "worker threads (byte codecs; the parallel decode timing)")
      ->capture_default_str();
  app.add_option("--mode", mode, "ptool codec mode: -1 auto, 0 single context, 1 mixing")->capture_default_str();
  app.add_option("--repeats", repeats, "decode timing repeats (best is reported)")->capture_default_str();
  app.add_flag("--no-baselines", no_baselines, "skip zlib/zstd/brotli/xz");
  app.add_flag("--no-xz", no_xz, "skip xz -9e (slow)");
  app.add_flag("--json", json, "print one JSON object instead of tables");
  CLI11_PARSE(app, argc, argv);

  try {
    for (const auto& l : layouts)
      if (l != "raw" && l != "transposed" && l != "shuffle2") throw Error("unknown layout '" + l + "'");
    std::vector<Tensor> ts;
    std::string source;
    const double t_load = wall_now();
    if (!raw_json.empty() && !artifact.empty()) throw Error("give --raw or --artifact, not both");
    if (!raw_json.empty()) {
      ts = load_raw(raw_json);
      source = "raw:" + raw_json;
    } else if (!artifact.empty()) {
      ts = load_artifact(artifact);
      source = "artifact:" + artifact;
    } else {
      const auto specs = ptool::baseline_code_specs(layers);
      for (auto& q : ptool::synthetic_model_codes(specs, ptool::synthetic_preset(preset), seed))
        ts.push_back({q.name, q.group, q.rows, q.cols, std::move(q.codes)});
      source = "synthetic:" + preset + ":seed=" + std::to_string(seed);
    }
    const double load_s = wall_now() - t_load;
    if (!write_stem.empty()) write_raw(write_stem, ts);

    // Groups in first-seen order.
    std::vector<GroupResult> groups;
    std::map<std::string, size_t> gi;
    std::vector<std::vector<const Tensor*>> members;
    for (const auto& t : ts) {
      if (!gi.count(t.group)) {
        gi[t.group] = groups.size();
        groups.push_back({});
        groups.back().name = t.group;
        members.emplace_back();
      }
      const size_t g = gi[t.group];
      groups[g].tensors++;
      groups[g].codes += t.codes.size();
      groups[g].h0 += order0_bytes(t.codes);
      members[g].push_back(&t);
    }

    // ptool codec: encode every tensor (single thread, CPU time), decode single-threaded and with `threads`.
    ptool::EntropyCodecOptions eo;
    eo.mode = mode;
    std::vector<std::vector<uint8_t>> streams(ts.size());
    double enc_cpu = 0;
    int mode1 = 0;
    for (size_t i = 0; i < ts.size(); ++i) {
      const double a = thread_cpu_now();
      streams[i] = ptool::encode_codes(ts[i].codes, ts[i].rows, ts[i].cols, eo);
      enc_cpu += thread_cpu_now() - a;
      groups[gi[ts[i].group]].ptool += streams[i].size();
      if (ptool::peek_codes_stream(streams[i]).mode == 1) ++mode1;
    }
    double dec_cpu = 1e30, dec_wall_1 = 1e30, dec_wall_n = 1e30;
    for (int rep = 0; rep < std::max(repeats, 1); ++rep) {
      double cpu = 0;
      const double w0 = wall_now();
      for (size_t i = 0; i < ts.size(); ++i) {
        const double a = thread_cpu_now();
        const auto back = ptool::decode_codes(streams[i], ts[i].rows, ts[i].cols);
        cpu += thread_cpu_now() - a;
        if (back != ts[i].codes) throw Error("ptool codec round trip failed for " + ts[i].name);
      }
      dec_wall_1 = std::min(dec_wall_1, wall_now() - w0);
      dec_cpu = std::min(dec_cpu, cpu);
      std::vector<std::function<void()>> jobs;
      std::vector<std::vector<int8_t>> outs(ts.size());
      for (size_t i = 0; i < ts.size(); ++i)
        jobs.push_back([&, i] { outs[i] = ptool::decode_codes(streams[i], ts[i].rows, ts[i].cols); });
      const double w1 = wall_now();
      run_jobs(jobs, threads);
      dec_wall_n = std::min(dec_wall_n, wall_now() - w1);
      for (size_t i = 0; i < ts.size(); ++i)
        if (outs[i] != ts[i].codes) throw Error("ptool codec parallel round trip failed for " + ts[i].name);
    }

    // Byte codecs per group and layout.
    std::vector<std::string> codecs;
    if (!no_baselines)
      for (const auto& c : kCodecs)
        if (!(no_xz && c == "xz-9e")) codecs.push_back(c);
    std::vector<std::function<void()>> jobs;
    std::mutex mu;
    for (size_t g = 0; g < groups.size(); ++g)
      for (const auto& layout : layouts)
        for (const auto& codec : codecs) {
          groups[g].sizes[layout][codec] = std::nullopt;
          jobs.push_back([&, g, layout, codec] {
            const auto bytes = layout_bytes(layout, members[g]);
            const auto size = compressed_size(codec, bytes);
            std::lock_guard<std::mutex> lock(mu);
            groups[g].sizes[layout][codec] = size;
          });
        }
    const double t_base = wall_now();
    run_jobs(jobs, threads);
    const double baselines_s = wall_now() - t_base;

    GroupResult total;
    total.name = "TOTAL";
    for (const auto& g : groups) {
      total.tensors += g.tensors;
      total.codes += g.codes;
      total.h0 += g.h0;
      total.ptool += g.ptool;
    }
    for (const auto& layout : layouts)
      for (const auto& codec : codecs) {
        std::optional<size_t> sum = size_t{0};
        for (const auto& g : groups) {  // a total only when every group has the codec
          const auto& s = g.sizes.at(layout).at(codec);
          sum = (sum && s) ? std::optional<size_t>(*sum + *s) : std::nullopt;
        }
        total.sizes[layout][codec] = sum;
      }
    std::vector<GroupResult> rows = groups;
    rows.push_back(total);

    auto ratio = [](uint64_t a, const std::optional<size_t>& b) -> std::optional<double> {
      if (!b || *b == 0) return std::nullopt;
      return static_cast<double>(a) / static_cast<double>(*b);
    };
    const double mb = static_cast<double>(total.codes) / 1e6;
    // ptool against brotli-11 on each layout and on the best layout for brotli.
    std::map<std::string, double> vs_brotli;
    std::optional<size_t> best_brotli;
    std::string best_layout;
    for (const auto& layout : layouts) {
      if (!total.sizes[layout].count("brotli-11")) continue;
      const auto b = total.sizes[layout]["brotli-11"];
      if (!b) continue;
      vs_brotli[layout] = static_cast<double>(total.ptool) / static_cast<double>(*b);
      if (!best_brotli || *b < *best_brotli) best_brotli = b, best_layout = layout;
    }
    const double codes_d = std::max<double>(1.0, static_cast<double>(total.codes));

    if (json) {
      nlohmann::json out;
      out["source"] = source;
      out["tensors"] = total.tensors;
      out["codes"] = total.codes;
      out["layouts"] = layouts;
      out["groups"] = nlohmann::json::array();
      for (const auto& g : rows) {
        nlohmann::json j;
        j["name"] = g.name;
        j["tensors"] = g.tensors;
        j["codes"] = g.codes;
        j["order0_bytes"] = std::llround(g.h0);
        j["ptool_bytes"] = g.ptool;
        j["ptool_vs_order0"] = g.h0 > 0 ? g.ptool / g.h0 : 0.0;
        for (const auto& [layout, m] : g.sizes)
          for (const auto& [codec, s] : m) j["bytes"][layout][codec] = s ? nlohmann::json(*s) : nlohmann::json(nullptr);
        if (g.sizes.count("raw") && g.sizes.at("raw").count("brotli-11")) {
          const auto r = ratio(g.ptool, g.sizes.at("raw").at("brotli-11"));
          j["ptool_vs_brotli11_raw"] = r ? nlohmann::json(*r) : nlohmann::json(nullptr);
        }
        out["groups"].push_back(j);
      }
      out["ptool"] = {{"encode_cpu_s", enc_cpu},
                      {"decode_cpu_s", dec_cpu},
                      {"decode_wall_s_1thread", dec_wall_1},
                      {"decode_wall_s_threads", dec_wall_n},
                      {"threads", threads},
                      {"decode_MB_per_s_1thread", mb / dec_cpu},
                      {"tensors_mode1", mode1}};
      nlohmann::json summary;
      summary["ptool_bits_per_code"] = 8.0 * static_cast<double>(total.ptool) / codes_d;
      summary["order0_bits_per_code"] = 8.0 * total.h0 / codes_d;
      for (const auto& [layout, r] : vs_brotli) summary["ptool_vs_brotli11"][layout] = r;
      if (best_brotli) {
        summary["brotli11_best_layout"] = best_layout;
        summary["ptool_vs_brotli11_best_layout"] = static_cast<double>(total.ptool) / static_cast<double>(*best_brotli);
      }
      out["summary"] = summary;
      out["load_s"] = load_s;
      out["baselines_wall_s"] = baselines_s;
      std::cout << out.dump(2) << "\n";
      return 0;
    }

    std::printf("source %s: %d tensors, %llu codes\n", source.c_str(), total.tensors,
                static_cast<unsigned long long>(total.codes));
    std::printf("order-0 = sum over tensors of each tensor's order-0 entropy (bits/8); layout-independent\n\n");
    for (const auto& layout : layouts) {
      std::printf("layout %s\n", layout.c_str());
      std::printf("%-10s %4s %10s %10s", "group", "n", "codes", "order-0");
      for (const auto& c : codecs) std::printf(" %10s", c.c_str());
      std::printf(" %10s %8s %8s\n", "ptool", "/order0", "/brotli");
      for (const auto& g : rows) {
        std::printf("%-10s %4d %10llu %10.0f", g.name.c_str(), g.tensors, static_cast<unsigned long long>(g.codes),
                    g.h0);
        for (const auto& c : codecs) std::printf(" %10s", fmt_size(g.sizes.at(layout).at(c)).c_str());
        const auto r = codecs.empty()
                           ? std::nullopt
                           : ratio(g.ptool, g.sizes.at(layout).count("brotli-11") ? g.sizes.at(layout).at("brotli-11")
                                                                                  : std::nullopt);
        char rs[32] = "-";
        if (r) std::snprintf(rs, sizeof rs, "%.4f", *r);
        std::printf(" %10llu %8.4f %8s\n", static_cast<unsigned long long>(g.ptool), g.h0 > 0 ? g.ptool / g.h0 : 0.0,
                    rs);
      }
      std::printf("\n");
    }
    std::printf("ptool codec: %.4f bits/code (order-0 sum %.4f)", 8.0 * static_cast<double>(total.ptool) / codes_d,
                8.0 * total.h0 / codes_d);
    for (const auto& [layout, r] : vs_brotli) std::printf("; %.4fx brotli-11 on %s", r, layout.c_str());
    if (best_brotli)
      std::printf("; %.4fx brotli-11 on its best layout (%s)",
                  static_cast<double>(total.ptool) / static_cast<double>(*best_brotli), best_layout.c_str());
    std::printf("\n");
    std::printf(
        "ptool codec: encode %.2f s CPU (%d of %d tensors chose the mixing mode); decode %.3f s CPU "
        "single-threaded (%.1f MB/s), %.3f s wall with %d threads\n",
        enc_cpu, mode1, total.tensors, dec_cpu, mb / dec_cpu, dec_wall_n, threads);
    std::printf("byte codecs: %.1f s wall with %d threads; load/generate %.2f s\n", baselines_s, threads, load_s);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_entropy: %s\n", e.what());
    return 1;
  }
}
