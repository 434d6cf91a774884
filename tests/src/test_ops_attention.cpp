// CPU reference ops: causal grouped-query attention (flash-style forward with lse, recomputing backward).
#include <stdexcept>
#include <thread>

#include "tests/src/test_ops_harness.h"

using namespace ptool;
using namespace ptool::test_ops;

namespace {

struct AttnShape {
  int64_t B, T, H, Hkv, hd;
  size_t q_size() const { return static_cast<size_t>(B * T * H * hd); }
  size_t kv_size() const { return static_cast<size_t>(B * T * Hkv * hd); }
};

// Inputs: q, k, v. Output: out (lse is checked separately).
auto attention_run(AttnShape s) {
  return [=](auto tag, const Vecs& in, const Vec* dout, Vecs* grads) {
    using T = decltype(tag);
    OpBuffers<T> b(in, grads);
    std::vector<T> out(s.q_size()), lse(static_cast<size_t>(s.B * s.H * s.T));
    cpu::attention_forward(b.p(0), b.p(1), b.p(2), s.B, s.T, s.H, s.Hkv, s.hd, out.data(), lse.data());
    if (dout) {
      auto g = cast_to<T>(*dout);
      cpu::attention_backward(g.data(), b.p(0), b.p(1), b.p(2), out.data(), lse.data(), s.B, s.T, s.H, s.Hkv, s.hd,
                              b.g(0), b.g(1), b.g(2));
      b.write_back(grads);
    }
    return to_double(out);
  };
}

Vecs attention_inputs(const AttnShape& s, uint64_t seed, double range = 1.0) {
  std::mt19937_64 rng(seed);
  return {random_vec(rng, s.q_size(), -range, range), random_vec(rng, s.kv_size(), -range, range),
          random_vec(rng, s.kv_size(), -range, range)};
}

// Textbook attention: full score matrix per (b, h), causal mask, softmax, weighted sum.
void naive_attention(const Vec& q, const Vec& k, const Vec& v, const AttnShape& s, Vec& out, Vec& lse) {
  out.assign(s.q_size(), 0.0);
  lse.assign(static_cast<size_t>(s.B * s.H * s.T), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.hd));
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t h = 0; h < s.H; ++h) {
      const int64_t kvh = h / (s.H / s.Hkv);
      for (int64_t i = 0; i < s.T; ++i) {
        Vec sc(static_cast<size_t>(i + 1));
        double m = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (int64_t e = 0; e < s.hd; ++e) {
            d += q[((b * s.T + i) * s.H + h) * s.hd + e] * k[((b * s.T + j) * s.Hkv + kvh) * s.hd + e];
          }
          sc[j] = d * scale;
          m = std::max(m, sc[j]);
        }
        double z = 0;
        for (auto& x : sc) z += std::exp(x - m);
        lse[(b * s.H + h) * s.T + i] = m + std::log(z);
        for (int64_t j = 0; j <= i; ++j) {
          const double p = std::exp(sc[j] - m) / z;
          for (int64_t e = 0; e < s.hd; ++e) {
            out[((b * s.T + i) * s.H + h) * s.hd + e] += p * v[((b * s.T + j) * s.Hkv + kvh) * s.hd + e];
          }
        }
      }
    }
  }
}

// Repeats each kv head H / Hkv times: GQA inputs -> equivalent multi-head inputs.
Vec expand_kv(const Vec& kv, const AttnShape& s) {
  const int64_t group = s.H / s.Hkv;
  Vec e(s.q_size());
  for (int64_t bt = 0; bt < s.B * s.T; ++bt) {
    for (int64_t h = 0; h < s.H; ++h) {
      for (int64_t d = 0; d < s.hd; ++d) e[(bt * s.H + h) * s.hd + d] = kv[(bt * s.Hkv + h / group) * s.hd + d];
    }
  }
  return e;
}

}  // namespace

TEST_CASE("attention over a single token returns its value vector and lse = its scaled score", "[ops]") {
  const AttnShape s{2, 1, 4, 2, 8};
  const Vecs in = attention_inputs(s, 1);
  Vec out(s.q_size()), lse(static_cast<size_t>(s.B * s.H));
  cpu::attention_forward(in[0].data(), in[1].data(), in[2].data(), s.B, s.T, s.H, s.Hkv, s.hd, out.data(),
                         lse.data());
  CHECK(max_abs_diff(out, expand_kv(in[2], s)) < 1e-15);
  Vec out_ref, lse_ref;
  naive_attention(in[0], in[1], in[2], s, out_ref, lse_ref);
  CHECK(max_abs_diff(lse, lse_ref) < 1e-14);
}

TEST_CASE("attention with zero queries averages the values of the visible prefix; lse = ln(t + 1)", "[ops]") {
  const AttnShape s{1, 5, 2, 1, 4};
  Vecs in = attention_inputs(s, 2);
  std::fill(in[0].begin(), in[0].end(), 0.0);
  Vec out(s.q_size()), lse(static_cast<size_t>(s.H * s.T));
  cpu::attention_forward(in[0].data(), in[1].data(), in[2].data(), s.B, s.T, s.H, s.Hkv, s.hd, out.data(),
                         lse.data());
  for (int64_t h = 0; h < s.H; ++h) {
    for (int64_t t = 0; t < s.T; ++t) {
      CHECK(lse[h * s.T + t] == Approx(std::log(t + 1.0)).epsilon(1e-14));
      for (int64_t d = 0; d < s.hd; ++d) {
        double mean = 0;
        for (int64_t j = 0; j <= t; ++j) mean += in[2][j * s.hd + d];
        CHECK(out[(t * s.H + h) * s.hd + d] == Approx(mean / (t + 1)).epsilon(1e-13));
      }
    }
  }
}

TEST_CASE("attention is causal: changing a future token leaves earlier outputs and lse unchanged", "[ops]") {
  const AttnShape s{2, 70, 4, 2, 8};  // crosses the 64-row block boundary
  Vecs in = attention_inputs(s, 3);
  Vec out0(s.q_size()), lse0(static_cast<size_t>(s.B * s.H * s.T));
  cpu::attention_forward(in[0].data(), in[1].data(), in[2].data(), s.B, s.T, s.H, s.Hkv, s.hd, out0.data(),
                         lse0.data());
  const int64_t tf = 40;  // perturb q, k and v of token 40 in every batch and head
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t e = 0; e < s.H * s.hd; ++e) in[0][(b * s.T + tf) * s.H * s.hd + e] += 3.0;
    for (int64_t e = 0; e < s.Hkv * s.hd; ++e) {
      in[1][(b * s.T + tf) * s.Hkv * s.hd + e] -= 2.0;
      in[2][(b * s.T + tf) * s.Hkv * s.hd + e] += 5.0;
    }
  }
  Vec out1(s.q_size()), lse1(lse0.size());
  cpu::attention_forward(in[0].data(), in[1].data(), in[2].data(), s.B, s.T, s.H, s.Hkv, s.hd, out1.data(),
                         lse1.data());
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t t = 0; t < s.T; ++t) {
      double diff = 0;
      for (int64_t e = 0; e < s.H * s.hd; ++e) {
        const size_t i = static_cast<size_t>((b * s.T + t) * s.H * s.hd + e);
        diff = std::max(diff, std::abs(out1[i] - out0[i]));
      }
      INFO("b " << b << " t " << t);
      if (t < tf) {
        CHECK(diff == 0.0);
      } else {
        CHECK(diff > 1e-3);
      }
    }
    for (int64_t h = 0; h < s.H; ++h) {
      for (int64_t t = 0; t < tf; ++t) CHECK(lse1[(b * s.H + h) * s.T + t] == lse0[(b * s.H + h) * s.T + t]);
    }
  }
}

TEST_CASE("attention forward matches a textbook implementation across query blocks", "[ops]") {
  const AttnShape s{2, 150, 4, 2, 16};
  const Vecs in = attention_inputs(s, 4, 2.0);
  Vec out(s.q_size()), lse(static_cast<size_t>(s.B * s.H * s.T)), out_ref, lse_ref;
  cpu::attention_forward(in[0].data(), in[1].data(), in[2].data(), s.B, s.T, s.H, s.Hkv, s.hd, out.data(),
                         lse.data());
  naive_attention(in[0], in[1], in[2], s, out_ref, lse_ref);
  CHECK(max_abs_diff(out, out_ref) < 1e-13);
  CHECK(max_abs_diff(lse, lse_ref) < 1e-13);
}

TEST_CASE("GQA equals multi-head attention with each kv head repeated, gradients summed over the group", "[ops]") {
  const AttnShape gqa{2, 9, 6, 2, 4};
  const AttnShape mha{2, 9, 6, 6, 4};
  const Vecs in = attention_inputs(gqa, 5);
  const Vecs in_mha = {in[0], expand_kv(in[1], gqa), expand_kv(in[2], gqa)};
  std::mt19937_64 rng(6);
  const Vec dout = random_vec(rng, gqa.q_size());
  Vecs g_gqa = {Vec(gqa.q_size(), 0.0), Vec(gqa.kv_size(), 0.0), Vec(gqa.kv_size(), 0.0)};
  Vecs g_mha = {Vec(mha.q_size(), 0.0), Vec(mha.kv_size(), 0.0), Vec(mha.kv_size(), 0.0)};
  const Vec o_gqa = attention_run(gqa)(double{}, in, &dout, &g_gqa);
  const Vec o_mha = attention_run(mha)(double{}, in_mha, &dout, &g_mha);
  CHECK(max_abs_diff(o_gqa, o_mha) < 1e-14);
  CHECK(max_abs_diff(g_gqa[0], g_mha[0]) < 1e-14);
  for (size_t which : {1, 2}) {
    Vec summed(gqa.kv_size(), 0.0);
    for (int64_t bt = 0; bt < gqa.B * gqa.T; ++bt) {
      for (int64_t h = 0; h < gqa.H; ++h) {
        for (int64_t d = 0; d < gqa.hd; ++d) {
          summed[(bt * gqa.Hkv + h / 3) * gqa.hd + d] += g_mha[which][(bt * gqa.H + h) * gqa.hd + d];
        }
      }
    }
    CHECK(max_abs_diff(g_gqa[which], summed) < 1e-13);
  }
}

TEST_CASE("attention backward matches central differences (GQA, H = 4, Hkv = 2)", "[ops]") {
  const AttnShape s{2, 5, 4, 2, 4};
  check_gradients(attention_run(s), attention_inputs(s, 7), {0, 1, 2}, {"q", "k", "v"}, {1e-5, 1e-6, 64, 11});
}

TEST_CASE("attention backward matches central differences (multi-head and multi-query)", "[ops]") {
  for (int64_t Hkv : {3, 1}) {
    INFO("Hkv " << Hkv);
    const AttnShape s{1, 6, 3, Hkv, 4};
    check_gradients(attention_run(s), attention_inputs(s, 8), {0, 1, 2}, {"q", "k", "v"});
  }
}

TEST_CASE("attention backward matches central differences across the 64-row query blocks", "[ops]") {
  const AttnShape s{1, 70, 2, 1, 4};
  check_gradients(attention_run(s), attention_inputs(s, 9, 1.5), {0, 1, 2}, {"q", "k", "v"}, {1e-5, 1e-6, 40, 12});
}

TEST_CASE("attention backward accumulates into existing gradients", "[ops]") {
  const AttnShape s{2, 67, 4, 2, 8};
  check_backward_accumulates(attention_run(s), attention_inputs(s, 10), {0, 1, 2}, {"q", "k", "v"});
}

TEST_CASE("attention backward skips gradients whose pointers are null", "[ops]") {
  const AttnShape s{1, 7, 2, 1, 4};
  const Vecs in = attention_inputs(s, 11);
  std::mt19937_64 rng(12);
  const Vec dout = random_vec(rng, s.q_size());
  Vecs all = {Vec(s.q_size(), 0.0), Vec(s.kv_size(), 0.0), Vec(s.kv_size(), 0.0)};
  attention_run(s)(double{}, in, &dout, &all);
  for (size_t only = 0; only < 3; ++only) {
    Vecs one = {Vec(), Vec(), Vec()};
    one[only] = Vec(in[only].size(), 0.0);
    attention_run(s)(double{}, in, &dout, &one);
    INFO("only gradient " << only);
    CHECK(max_abs_diff(one[only], all[only]) < 1e-15);
  }
}

TEST_CASE("attention float matches double", "[ops]") {
  const AttnShape s{2, 100, 4, 2, 16};
  check_float_matches_double(attention_run(s), attention_inputs(s, 13), {0, 1, 2}, {"q", "k", "v"}, 1e-5);
}

TEST_CASE("attention rejects H not divisible by Hkv", "[ops]") {
  std::vector<float> x(64), lse(8);
  CHECK_THROWS_AS(cpu::attention_forward(x.data(), x.data(), x.data(), 1, 2, 4, 3, 2, x.data(), lse.data()),
                  std::invalid_argument);
}

TEST_CASE("attention forward without an lse buffer gives the same output", "[ops]") {
  const AttnShape s{1, 70, 2, 1, 8};
  const Vecs in = attention_inputs(s, 14);
  Vec out(s.q_size()), out_nolse(s.q_size()), lse(static_cast<size_t>(s.H * s.T));
  cpu::attention_forward(in[0].data(), in[1].data(), in[2].data(), s.B, s.T, s.H, s.Hkv, s.hd, out.data(),
                         lse.data());
  cpu::attention_forward(in[0].data(), in[1].data(), in[2].data(), s.B, s.T, s.H, s.Hkv, s.hd, out_nolse.data(),
                         static_cast<double*>(nullptr));
  CHECK(out == out_nolse);
}

// The scratch rows live in thread-local buffers. Eigen's kernels take alignment-dependent paths (different
// summation orders), so the buffers are 64-byte aligned: a thread whose heap happens to sit elsewhere must get
// the same bits. Each thread first takes a differently sized block from its own allocator arena.
TEST_CASE("attention results do not depend on where its scratch memory lands", "[ops]") {
  const AttnShape s{2, 77, 2, 1, 32};
  const Vecs in = attention_inputs(s, 29);
  auto run = [&] {
    std::vector<float> q(in[0].begin(), in[0].end()), k(in[1].begin(), in[1].end()), v(in[2].begin(), in[2].end());
    std::vector<float> out(s.q_size()), lse(static_cast<size_t>(s.B * s.H * s.T)), dout(s.q_size(), 0.5f);
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
    cpu::attention_forward(q.data(), k.data(), v.data(), s.B, s.T, s.H, s.Hkv, s.hd, out.data(), lse.data());
    cpu::attention_backward(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), s.B, s.T, s.H, s.Hkv,
                            s.hd, dq.data(), dk.data(), dv.data());
    std::vector<float> all = out;
    for (const auto* g : {&lse, &dq, &dk, &dv}) all.insert(all.end(), g->begin(), g->end());
    return all;
  };
  const std::vector<float> want = run();
  std::vector<std::vector<float>> got(8);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t) {
    threads.emplace_back([&, t] {
      std::vector<char> shift(8 * t + 4);  // moves this thread's next allocations by a few bytes
      got[t] = run();
    });
  }
  for (auto& th : threads) th.join();
  for (size_t t = 0; t < got.size(); ++t) {
    INFO("thread " << t);
    CHECK(got[t] == want);
  }
}
