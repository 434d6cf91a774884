// LR schedules (§3.3, §4.3), gradient clipping, EMA and SWA (§4.4) at pinned points.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "formats/error.h"
#include "src/train/schedule.h"

using namespace ptool::train;

TEST_CASE("step-count warmdown (no time cap)", "[train]") {
  // ITERATIONS 20000, WARMDOWN_ITERS 1200: decay starts at step 18800.
  CHECK(lr_mul_step_warmdown(0, 20000, 1200) == 1.0);
  CHECK(lr_mul_step_warmdown(18799, 20000, 1200) == 1.0);
  CHECK(lr_mul_step_warmdown(18800, 20000, 1200) == 1.0);
  CHECK(lr_mul_step_warmdown(19400, 20000, 1200) == Approx(0.5));
  CHECK(lr_mul_step_warmdown(19999, 20000, 1200) == Approx(1.0 / 1200));
  CHECK(lr_mul_step_warmdown(20000, 20000, 1200) == 1.0);  // past the end: reference returns 1
  CHECK(lr_mul_step_warmdown(10, 20000, 0) == 1.0);
  // Whole run as a decay (warmdown ≥ iterations): linear from the first step.
  CHECK(lr_mul_step_warmdown(0, 100, 200) == Approx(0.5));
  CHECK(lr_mul_step_warmdown(50, 100, 200) == Approx(0.25));
}

TEST_CASE("wall-clock estimator of WARMDOWN_ITERS", "[train]") {
  const double cap = 600000.0;
  // 10000 steps in 400 s: 40 ms/step, warmdown 48 s, 200 s left → 1.
  CHECK(lr_mul_wallclock_warmdown(10000, 400000.0, 1200, cap) == 1.0);
  // 13000 steps in 576 s: 44.3077 ms/step, warmdown 53169.2 ms, 24000 ms left → 0.451389.
  CHECK(lr_mul_wallclock_warmdown(13000, 576000.0, 1200, cap) == Approx(24000.0 / (1200 * 576000.0 / 13000)));
  CHECK(lr_mul_wallclock_warmdown(13000, 576000.0, 1200, cap) == Approx(0.451389).epsilon(1e-5));
  // Exactly at the boundary remaining == warmdown_ms → 1.
  CHECK(lr_mul_wallclock_warmdown(1000, 500000.0, 200, cap) == Approx(1.0));
  // Past the cap → 0; step 0 (no estimate yet) → 1.
  CHECK(lr_mul_wallclock_warmdown(14000, 601000.0, 1200, cap) == 0.0);
  CHECK(lr_mul_wallclock_warmdown(0, 0.0, 1200, cap) == 1.0);
  // Dispatcher: cap → wall-clock form; no cap → step form; warmdown 0 → 1.
  CHECK(lr_mul_baseline(13000, 576000.0, 20000, 1200, cap) == Approx(0.451389).epsilon(1e-5));
  CHECK(lr_mul_baseline(19400, 1e9, 20000, 1200, 0.0) == Approx(0.5));
  CHECK(lr_mul_baseline(13000, 599000.0, 20000, 0, cap) == 1.0);
}

TEST_CASE("wall-clock-fraction warmdown with MIN_LR", "[train]") {
  CHECK(lr_mul_fraction(0.2, 0.72, 0.1) == 1.0);
  CHECK(lr_mul_fraction(0.28, 0.72, 0.1) == Approx(1.0));
  CHECK(lr_mul_fraction(0.64, 0.72, 0.1) == Approx(0.5));
  CHECK(lr_mul_fraction(0.95, 0.72, 0.1) == Approx(0.1));   // 0.0694 floored
  CHECK(lr_mul_fraction(0.9, 0.72, 0.1) == Approx(0.1 / 0.72));
  CHECK(lr_mul_fraction(1.2, 0.72, 0.1) == Approx(0.1));
  CHECK(lr_mul_fraction(1.2, 0.72, 0.0) == 0.0);
  CHECK(lr_mul_fraction(0.99, 0.0, 0.1) == 1.0);
  CHECK(lr_mul_fraction(0.5, 0.85) == Approx(0.5 / 0.85));
  // frac: elapsed over (cap − GPTQ reserve); no cap → step / iterations.
  CHECK(training_frac(10, 298000.0, 20000, 600000.0, 4000.0) == Approx(0.5));
  CHECK(training_frac(10, 300000.0, 20000, 600000.0) == Approx(0.5));
  CHECK(training_frac(500, 1e9, 2000, 0.0) == Approx(0.25));
  CHECK(training_frac(500, 1e9, 0, 0.0) == Approx(500.0));
}

TEST_CASE("Muon WD taper", "[train]") {
  CHECK(wd_taper_mul(0.5, 0.7, 0.5) == 1.0);
  CHECK(wd_taper_mul(0.7, 0.7, 0.5) == 1.0);
  CHECK(wd_taper_mul(0.85, 0.7, 0.5) == Approx(0.75));
  CHECK(wd_taper_mul(1.0, 0.7, 0.5) == Approx(0.5));
  CHECK(wd_taper_mul(1.3, 0.7, 0.5) == Approx(0.5));
}

TEST_CASE("global-norm gradient clipping", "[train]") {
  std::vector<float> g = {3, 4, 0};
  CHECK(global_norm(g) == Approx(5.0));
  CHECK(clip_grad_norm(g, 10.0) == Approx(5.0));  // below the limit: untouched
  CHECK(g == std::vector<float>{3, 4, 0});
  CHECK(clip_grad_norm(g, 0.0) == Approx(5.0));   // disabled
  CHECK(g == std::vector<float>{3, 4, 0});
  CHECK(clip_grad_norm(g, 1.0) == Approx(5.0));   // returns the norm before clipping
  CHECK(g[0] == Approx(3.0 / (5.0 + 1e-6)));
  CHECK(g[1] == Approx(4.0 / (5.0 + 1e-6)));
  CHECK(global_norm(g) == Approx(1.0).epsilon(1e-6));
  std::vector<float> bad = {1, std::numeric_limits<float>::quiet_NaN()};
  CHECK(std::isnan(clip_grad_norm(bad, 0.3)));
  CHECK(bad[0] == 1.0f);  // left for the caller to report
  // 0.3 (the records' value) on a larger vector.
  std::vector<float> big(100, 0.1f);  // norm 1
  CHECK(clip_grad_norm(big, 0.3) == Approx(1.0));
  CHECK(global_norm(big) == Approx(0.3).epsilon(1e-5));
}

TEST_CASE("EMA update", "[train]") {
  std::vector<float> ema = {1, 0}, w = {2, 10};
  ema_update(ema, w, 0.9);
  CHECK(ema[0] == Approx(1.1));
  CHECK(ema[1] == Approx(1.0));
  for (int i = 1; i < 50; ++i) ema_update(ema, w, 0.9);
  CHECK(ema[0] == Approx(2.0 - std::pow(0.9, 50)).epsilon(1e-5));  // closed form
  CHECK(ema[1] == Approx(10.0 * (1.0 - std::pow(0.9, 50))).epsilon(1e-5));
  std::vector<float> e = {0.0f};
  const std::vector<float> one = {1.0f};
  ema_update(e, one, 0.997);
  CHECK(e[0] == Approx(0.003).epsilon(1e-5));
  std::vector<float> wrong = {1, 2, 3};
  CHECK_THROWS_AS(ema_update(ema, wrong, 0.9), ptool::Error);
}

TEST_CASE("SWA uniform average inside the warmdown", "[train]") {
  Swa swa(2, 50, 0.5);
  const std::vector<float> a = {1, 2}, b = {3, 6}, c = {5, 1};
  std::vector<float> out(2);
  CHECK_THROWS_AS(swa.average(out), ptool::Error);
  CHECK_FALSE(swa.maybe_accumulate(50, 0.6, a));   // lr_mul not below the threshold yet
  CHECK_FALSE(swa.maybe_accumulate(120, 0.45, a)); // not a multiple of 50
  CHECK(swa.maybe_accumulate(150, 0.45, a));
  CHECK(swa.maybe_accumulate(200, 0.3, b));
  CHECK_FALSE(swa.maybe_accumulate(200, 0.5, c));  // strictly below
  CHECK(swa.maybe_accumulate(250, 0.1, c));
  CHECK(swa.count() == 3);
  swa.average(out);
  CHECK(out[0] == Approx(3.0));
  CHECK(out[1] == Approx(3.0));
  // Resume from saved state.
  Swa r(2, 50, 0.5);
  r.restore(swa.sum(), swa.count());
  r.accumulate(a);
  r.average(out);
  CHECK(out[0] == Approx(10.0 / 4));
  CHECK(out[1] == Approx(11.0 / 4));
  CHECK_THROWS_AS(Swa(2, 0, 0.5), ptool::Error);
}
