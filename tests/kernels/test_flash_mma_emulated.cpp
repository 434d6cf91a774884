// The bf16 flash attention kernels run on the host emulator (flash_mma_emulator.h: the kernel source, thread by
// thread, with ldmatrix / mma.sync modelled per the PTX fragment layouts) against the CPU reference, with the
// tolerances of the GPU test (flash_test_util.h), and exactly on uniform attention (q = 0, integer v). Runs
// without a GPU: it checks the kernels' indexing, masking, partial tiles, GQA mapping and fragment use, not the
// hardware. Small shapes (every CUDA thread is an OS thread).
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <string>

#include "src/ops/cpu_ops.h"
#include "tests/kernels/flash_mma_emulator.h"
#include "tests/kernels/flash_test_util.h"

using namespace ptool::flash_test;

namespace {

void emulated_case(std::mt19937_64& rng, const AttnShape& s, float qscale, bool with_dq, bool with_dkv) {
  const int B = static_cast<int>(s.B), T = static_cast<int>(s.Tn), H = static_cast<int>(s.H),
            Hkv = static_cast<int>(s.Hkv);
  const std::string shape = shape_name(s) +
                            (qscale != 1.f ? " q x" + std::to_string(static_cast<int>(qscale)) : std::string()) +
                            (with_dq && with_dkv ? "" : with_dq ? " (dq only)" : " (dk, dv only)");
  const size_t nq = static_cast<size_t>(s.B * s.Tn * s.H * s.hd), nkv = static_cast<size_t>(s.B * s.Tn * s.Hkv * s.hd);
  const Vec q = rand_vec(rng, nq, -qscale, qscale), k = rand_vec(rng, nkv), v = rand_vec(rng, nkv);
  const Vec dout = rand_vec(rng, nq), dq0 = rand_vec(rng, nq), dk0 = rand_vec(rng, nkv), dv0 = rand_vec(rng, nkv);
  Vec out(nq), lse(static_cast<size_t>(s.B * s.H * s.Tn)), dq = dq0, dk = dk0, dv = dv0;
  ptool::cpu::attention_forward(q.data(), k.data(), v.data(), s.B, s.Tn, s.H, s.Hkv, s.hd, out.data(), lse.data());
  ptool::cpu::attention_backward(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), s.B, s.Tn, s.H,
                                 s.Hkv, s.hd, with_dq ? dq.data() : nullptr, with_dkv ? dk.data() : nullptr,
                                 with_dkv ? dv.data() : nullptr);
  const TermScale ts = term_scales(q, k, v, dout, out, lse, s);

  Vec eout(nq), lse_e(lse.size()), edq = dq0, edk = dk0, edv = dv0;
  auto run = [&](auto forward, auto backward) {
    forward(q.data(), k.data(), v.data(), B, T, H, Hkv, eout.data(), lse_e.data());
    backward(dout.data(), q.data(), k.data(), v.data(), eout.data(), lse_e.data(), B, T, H, Hkv,
             with_dq ? edq.data() : nullptr, with_dkv ? edk.data() : nullptr, with_dkv ? edv.data() : nullptr);
  };
  if (s.hd == 64)
    run(ptool::flash_emu::forward<64>, ptool::flash_emu::backward<64>);
  else
    run(ptool::flash_emu::forward<128>, ptool::flash_emu::backward<128>);
  check_tol("emulated flash forward out" + shape, eout, out, tol_of(ts.out, out));
  check_tol("emulated flash forward lse" + shape, lse_e, lse, DVec(lse.size(), 1e-2 * qscale));
  check_tol("emulated flash backward dq (accumulated)" + shape, edq, dq, tol_of(ts.dq, dq));
  check_tol("emulated flash backward dk (accumulated)" + shape, edk, dk, tol_of(ts.dk, dk));
  check_tol("emulated flash backward dv (accumulated)" + shape, edv, dv, tol_of(ts.dv, dv));
}

}  // namespace

TEST_CASE("flash emulated: bf16 kernels follow the CPU reference") {
  std::mt19937_64 rng(31);
  // T = 1, 3; T past one tile and not a multiple of the tiles (128 or 64 query rows, 64 keys, 32 queries in
  // dK/dV at hd 128); GQA 1, 2, 4.
  emulated_case(rng, {1, 1, 1, 1, 64}, 1.f, true, true);
  emulated_case(rng, {1, 3, 4, 1, 64}, 1.f, true, true);
  emulated_case(rng, {2, 70, 4, 2, 64}, 1.f, true, true);
  emulated_case(rng, {1, 200, 2, 1, 64}, 1.f, true, true);
  emulated_case(rng, {1, 130, 2, 1, 128}, 1.f, true, true);
  emulated_case(rng, {1, 97, 2, 2, 128}, 8.f, true, true);
  emulated_case(rng, {1, 80, 2, 1, 64}, 1.f, true, false);
  emulated_case(rng, {1, 80, 2, 1, 128}, 1.f, false, true);
}

TEST_CASE("flash emulated: uniform attention (q = 0, integer v) is exact") {
  std::mt19937_64 rng(32);
  std::uniform_int_distribution<int> iv(-8, 8);
  for (const AttnShape s : {AttnShape{1, 129, 4, 2, 64}, AttnShape{2, 70, 2, 1, 128}}) {
    const int64_t B = s.B, T = s.Tn, H = s.H, Hkv = s.Hkv, hd = s.hd, group = H / Hkv;
    const size_t nq = static_cast<size_t>(B * T * H * hd), nkv = static_cast<size_t>(B * T * Hkv * hd);
    Vec v(nkv);
    for (auto& x : v) x = static_cast<float>(iv(rng));
    const Vec q(nq, 0.f), k = rand_vec(rng, nkv);
    Vec want(nq);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < hd; ++d) {
          double sum = 0.0;  // integers: exact
          for (int64_t t = 0; t < T; ++t) {
            sum += v[((b * T + t) * Hkv + h / group) * hd + d];
            want[((b * T + t) * H + h) * hd + d] = static_cast<float>(sum) * (1.f / static_cast<float>(t + 1));
          }
        }
    Vec out(nq), lse(static_cast<size_t>(B * H * T));
    const int b = static_cast<int>(B), t = static_cast<int>(T), h = static_cast<int>(H), hk = static_cast<int>(Hkv);
    if (hd == 64)
      ptool::flash_emu::forward<64>(q.data(), k.data(), v.data(), b, t, h, hk, out.data(), lse.data());
    else
      ptool::flash_emu::forward<128>(q.data(), k.data(), v.data(), b, t, h, hk, out.data(), lse.data());
    check_exact("emulated flash forward out, uniform attention" + shape_name(s), out, want);
  }
}
