// Parity of the CUDA backend's exclusive self-attention (xsa_forward, xsa_backward) with the CPU reference.
// Tolerance: 2e-6 absolute for inputs in U(-1, 1) (dot products and |v| in double on both sides, summed in another
// order: c and e may differ by one float ulp, each element then by about ulp(c) |u|).
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "kernels/cuda_backend.h"
#include "src/ops/backend.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/parity_test_util.h"

using namespace ptool;
using namespace ptool::parity_test;

using ptool::gpu_test::check_exact;
using ptool::gpu_test::Dev;

namespace {

struct XsaCase {
  int64_t N, H, Hkv, hd;
  std::string label() const {
    return " N=" + std::to_string(N) + " H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) + " hd=" +
           std::to_string(hd);
  }
};

const XsaCase kCases[] = {{300, 8, 4, 64}, {65, 4, 1, 128}, {33, 32, 8, 32}, {17, 8, 2, 96}, {5, 4, 2, 16}};

struct XsaInputs {
  Vec att, v, dy, dv_wide;  // dv_wide: [N, extra + Hkv hd + extra] with v's gradient in the middle columns
  int64_t extra = 3;
  int64_t ld(const XsaCase& c) const { return c.Hkv * c.hd + 2 * extra; }
};

XsaInputs xsa_inputs(std::mt19937_64& rng, const XsaCase& c) {
  XsaInputs in;
  in.att = rand_vec(rng, static_cast<size_t>(c.N * c.H * c.hd));
  in.v = rand_vec(rng, static_cast<size_t>(c.N * c.Hkv * c.hd));
  std::fill_n(in.v.begin(), c.hd, 0.f);  // a zero value row: F.normalize's clamp
  in.dy = rand_vec(rng, in.att.size());
  in.dv_wide = rand_vec(rng, static_cast<size_t>(c.N * in.ld(c)));
  return in;
}

}  // namespace

// The forward, the datt half (written over garbage) and the dv half (added into columns of a wider buffer) on the
// GPU with fp32 memory, against the CPU.
TEST_CASE("cuda: exclusive self-attention forward and backward", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend<float>();
  auto g = gpu_backend(CudaGemmPrecision::fp32);
  std::mt19937_64 rng(311);
  for (const XsaCase& c : kCases) {
    const XsaInputs in = xsa_inputs(rng, c);
    const int64_t ld = in.ld(c);
    Vec y(in.att.size()), datt(in.att.size()), dv = in.dv_wide;
    cpu->xsa_forward(in.att.data(), in.v.data(), c.N, c.H, c.Hkv, c.hd, y.data());
    cpu->xsa_backward(in.dy.data(), in.att.data(), in.v.data(), c.N, c.H, c.Hkv, c.hd, datt.data(), {nullptr});
    cpu->xsa_backward(in.dy.data(), in.att.data(), in.v.data(), c.N, c.H, c.Hkv, c.hd, nullptr, {dv.data(), ld, 3});
    Dev ga(*g, in.att), gv(*g, in.v), gdy(*g, in.dy), gy(*g, Vec(y.size(), 7.f)), gdatt(*g, Vec(y.size(), 7.f)),
        gdv(*g, in.dv_wide);
    g->xsa_forward(ga.p(), gv.p(), c.N, c.H, c.Hkv, c.hd, gy.p());
    g->xsa_backward(gdy.p(), ga.p(), gv.p(), c.N, c.H, c.Hkv, c.hd, gdatt.p(), {nullptr});
    g->xsa_backward(gdy.p(), ga.p(), gv.p(), c.N, c.H, c.Hkv, c.hd, nullptr, {gdv.p(), ld, 3});
    check_close("xsa_forward" + c.label(), gy.get(), y, 2e-6, 0.0);
    check_close("xsa_backward datt" + c.label(), gdatt.get(), datt, 2e-6, 0.0);
    check_close("xsa_backward dv (added into a slice)" + c.label(), gdv.get(), dv, 2e-6, 0.0);
    const Vec untouched = gdv.get();
    for (int64_t n = 0; n < c.N; ++n)  // the columns beside the slice keep their values
      for (int64_t j : {int64_t{0}, int64_t{2}, ld - 1}) CHECK(untouched[n * ld + j] == in.dv_wide[n * ld + j]);
  }
}

// In the bf16 mode the layer's att, v and dy are operand buffers: the kernels read their stored values and round
// what they store, so the results are the fp32 kernels' on the rounded inputs, rounded once.
TEST_CASE("cuda: exclusive self-attention reads and writes operand buffers as stored values", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto f = gpu_backend(CudaGemmPrecision::fp32);
  auto g = gpu_backend(CudaGemmPrecision::bf16);
  std::mt19937_64 rng(312);
  for (const XsaCase& c : {kCases[0], kCases[3]}) {
    XsaInputs in = xsa_inputs(rng, c);
    in.dv_wide = bf16_rounded(in.dv_wide);
    const int64_t ld = in.ld(c);
    const size_t na = in.att.size();
    Dev fa(*f, bf16_rounded(in.att)), fv(*f, bf16_rounded(in.v)), fdy(*f, bf16_rounded(in.dy)), fy(*f, Vec(na)),
        fdatt(*f, Vec(na)), fdv(*f, in.dv_wide);
    f->xsa_forward(fa.p(), fv.p(), c.N, c.H, c.Hkv, c.hd, fy.p());
    f->xsa_backward(fdy.p(), fa.p(), fv.p(), c.N, c.H, c.Hkv, c.hd, fdatt.p(), {fdv.p(), ld, 3});

    auto operand = [&](const Vec& h) {
      DeviceBuffer<float> b(*g, h.size(), Storage::operand);
      Dev tmp(*g, h);
      g->store_operand(b.get(), tmp.p(), h.size());
      return b;
    };
    auto values = [&](const DeviceBuffer<float>& b) {
      Dev out(*g, Vec(b.size()));
      g->operand_values(b.get(), b.size(), out.p());
      return out.get();
    };
    DeviceBuffer<float> oa = operand(in.att), ov = operand(in.v), ody = operand(in.dy), odv = operand(in.dv_wide);
    DeviceBuffer<float> oy(*g, na, Storage::operand), odatt(*g, na, Storage::operand);
    g->xsa_forward(oa.get(), ov.get(), c.N, c.H, c.Hkv, c.hd, oy.get());
    g->xsa_backward(ody.get(), oa.get(), ov.get(), c.N, c.H, c.Hkv, c.hd, odatt.get(), {odv.get(), ld, 3});
    check_exact("xsa_forward into an operand buffer" + c.label(), values(oy), bf16_rounded(fy.get()));
    check_exact("xsa_backward datt into an operand buffer" + c.label(), values(odatt), bf16_rounded(fdatt.get()));
    check_exact("xsa_backward dv added into an operand slice" + c.label(), values(odv), bf16_rounded(fdv.get()));
  }
}

TEST_CASE("cuda: exclusive self-attention refuses head dims above 128 and H not a multiple of Hkv", "[gpu]") {
  SKIP_WITHOUT_GPU();
  auto g = gpu_backend(CudaGemmPrecision::fp32);
  Dev a(*g, Vec(2 * 256)), v(*g, Vec(2 * 256)), y(*g, Vec(2 * 256));
  CHECK_THROWS_AS(g->xsa_forward(a.p(), v.p(), 1, 2, 1, 256, y.p()), std::invalid_argument);
  CHECK_THROWS_AS(g->xsa_forward(a.p(), v.p(), 1, 3, 2, 16, y.p()), std::invalid_argument);
  CHECK_THROWS_AS(g->xsa_backward(a.p(), a.p(), v.p(), 1, 2, 1, 256, y.p(), {nullptr}), std::invalid_argument);
}
