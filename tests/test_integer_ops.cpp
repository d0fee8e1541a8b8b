// The non-uniform quantizers (twin uniform, log2, power-of-two factor) and the integer kernels (exp, softmax,
// LayerNorm) against naive references: the same algorithm written as plain loops (bit for bit) and the
// floating-point operation they approximate (within a stated bound).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "vitq/quant/integer_ops.h"
#include "vitq/quant/quantizer.h"
#include "vitq/util/error.h"

using namespace vitq;

namespace {
QuantSpec kind_spec(QuantKind k, int bits, bool is_signed) {
  QuantSpec s;
  s.kind = k;
  s.bits = bits;
  s.symmetric = true;
  s.is_signed = is_signed;
  return s;
}
int64_t count_ne(const at::Tensor& a, const at::Tensor& b) { return (a != b).sum().item<int64_t>(); }
}  // namespace

TEST(TwinUniform, SoftmaxMatchesReference) {
  at::manual_seed(0);
  auto x = at::softmax(at::randn({4, 3, 50, 50}) * 3, -1);
  for (int bits : {4, 6, 8})
    for (int shift : {0, 3, 7, 12}) {
      auto s = kind_spec(QuantKind::TwinUniform, bits, false);
      auto p = twin_softmax_params(bits, shift);
      auto fast = fake_quant(x, s, p), ref = fake_quant_reference(x, s, p);
      EXPECT_EQ(count_ne(fast, ref), 0) << bits << " bits, shift " << shift;
      // every output lies on one of the two grids, and the error is at most half the step that was used
      const double d1 = p.scale.item<double>(), d2 = p.scale2.item<double>();
      auto fine = x < (std::ldexp(1.0, bits - 1) - 0.5) * d1;
      auto err = (fast - x).abs();
      EXPECT_LE(at::where(fine, err, at::zeros_like(err)).max().item<double>(), d1 / 2 + 1e-7);
      EXPECT_LE(err.max().item<double>(), d2 + 1e-7);  // 1.0 clamps to 1 - Δ2
    }
}

TEST(TwinUniform, GeluMatchesReference) {
  at::manual_seed(1);
  auto x = at::gelu(at::randn({8, 197, 64}) * 2);
  for (int bits : {4, 6, 8}) {
    auto s = kind_spec(QuantKind::TwinUniform, bits, true);
    auto p = twin_gelu_params(bits, x.max().item<double>() / ((1 << (bits - 1)) - 1));
    auto fast = fake_quant(x, s, p), ref = fake_quant_reference(x, s, p);
    EXPECT_EQ(count_ne(fast, ref), 0) << bits;
    // the negative range reaches GELU's minimum on the fine grid
    const double d1 = p.scale.item<double>();
    EXPECT_GE(((1 << (bits - 1)) - 1) * d1, 0.17 - 1e-9);
    auto neg = x < 0;
    EXPECT_LE(at::where(neg, (fast - x).abs(), at::zeros_like(x)).max().item<double>(), d1 / 2 + 1e-7);
  }
}

// Twin uniform off its grids (zero, -0, ±inf, far beyond either end, NaN) and on the boundary between them: the
// fast path gives the reference's value on each, NaN only for NaN, and a straight-through gradient of 1 on every
// element.
TEST(TwinUniform, ValuesOffTheGridMatchTheReference) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (int bits : {4, 6, 8})
    for (bool is_signed : {false, true}) {
      auto s = kind_spec(QuantKind::TwinUniform, bits, is_signed);
      auto p = is_signed ? twin_gelu_params(bits, 0.5) : twin_softmax_params(bits, 3);
      const float d1 = p.scale.item<float>(), n = static_cast<float>((1 << (bits - 1)) - 1);
      auto x = at::tensor({0.0f, -0.0f, -1.0f, -1e-3f, nan, inf, -inf, 1e-30f, 1e30f, -1e30f, 0.3f, 0.999f,
                           n * d1, (n + 0.5f) * d1, (n + 0.6f) * d1, -n * d1, -(n + 2) * d1});
      auto fast = fake_quant(x, s, p), ref = fake_quant_reference(x, s, p);
      const auto what = std::string(is_signed ? "signed " : "unsigned ") + std::to_string(bits) + " bits";
      EXPECT_TRUE(at::equal(at::isnan(fast), at::isnan(x))) << what << ": " << at::stack({x, fast, ref}, 1);
      auto not_nan = ~at::isnan(x);  // ±inf included
      EXPECT_EQ(count_ne(fast.masked_select(not_nan), ref.masked_select(not_nan)), 0) << what << ": " << at::stack({x, fast, ref}, 1);
      auto xg = x.clone().requires_grad_(true);
      fake_quant(xg, s, p).sum().backward();
      EXPECT_TRUE(at::equal(xg.grad(), at::ones_like(x))) << what << ": " << xg.grad();
    }
}

TEST(Log2Quantizer, MatchesReferenceAndPowersOfTwo) {
  at::manual_seed(2);
  auto x = at::softmax(at::randn({2, 3, 40, 40}) * 4, -1);
  for (int bits : {3, 4, 8}) {
    auto s = kind_spec(QuantKind::Log2, bits, false);
    auto p = log2_params();
    auto fast = fake_quant(x, s, p), ref = fake_quant_reference(x, s, p);
    // float log2 vs double log2 may differ only where -log2(x) sits on a rounding boundary
    auto diff = fast != ref;
    auto frac = at::frac(-at::log2(x.to(at::kDouble))).abs();
    EXPECT_TRUE(at::where(diff, (frac - 0.5).abs() < 1e-5, at::ones_like(diff)).all().item<bool>()) << bits;
    // outputs are 0 or 2^-c with c in 0..2^b - 1
    auto nz = fast.masked_select(fast > 0);
    auto c = -at::log2(nz);
    EXPECT_TRUE(at::equal(c, at::round(c)));
    EXPECT_LE(c.max().item<double>(), (1 << bits) - 1);
    // values far below the smallest level quantize to 0
    EXPECT_EQ(fake_quant(at::full({1}, std::ldexp(1.0, -(1 << bits) - 3)), s, p).item<float>(), 0.0f);
  }
  EXPECT_THROW(kind_spec(QuantKind::Log2, 4, true).validate(), Error);
}

// The log kinds below their grid (zero, negative, NaN, far too small) and above it (+inf, large): the fast path
// (element-wise masks, no branch per element) gives the reference's value on each, codes top + 1 below the grid,
// and a straight-through gradient of 1 on every element.
TEST(Log2Quantizer, ValuesOffTheGridMatchTheReference) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  auto x = at::tensor({0.0f, -0.0f, -1.0f, -1e-3f, nan, inf, -inf, 1e-30f, 1e-45f, 3.0f, 0.5f, 0.1f, 0.03f});
  for (int bits : {3, 4, 8})
    for (auto [kind, p] : {std::pair{QuantKind::Log2, log2_params()}, {QuantKind::LogSqrt2, log2_params()},
                           {QuantKind::AdaLog, adalog_params(0.8, 1.5, 0.0)}, {QuantKind::AdaLog, adalog_params(2.0, 3.0, 0.17)}}) {
      auto s = kind_spec(kind, bits, false);
      auto fast = fake_quant(x, s, p), ref = fake_quant_reference(x, s, p);
      const double shift = log_shift(s, p), top = log2_max_code(s);
      auto below = ((x + shift) / p.scale <= 0) | at::isnan(x);
      // exactly -shift below the grid; on it, the reference's level in double rounded to float, the fast path's
      // in float (AdaLog's non-integer base: an ulp apart)
      EXPECT_TRUE(at::equal(fast.masked_select(below), at::full({below.sum().item<int64_t>()}, -shift)))
          << quant_kind_name(kind) << " " << bits << " bits: " << at::stack({x, fast, ref}, 1);
      EXPECT_TRUE(at::allclose(fast, ref, 1e-6, 1e-7)) << quant_kind_name(kind) << " " << bits << " bits: " << at::stack({x, fast, ref}, 1);
      if (kind != QuantKind::AdaLog) EXPECT_EQ(count_ne(fast, ref), 0) << quant_kind_name(kind) << " " << bits << " bits";
      auto codes = quantize_codes(x, s, p);
      EXPECT_TRUE(at::where(below, codes == top + 1, codes <= top + 1).all().item<bool>()) << codes;
      EXPECT_TRUE(at::isfinite(codes).all().item<bool>()) << codes;
      auto xg = x.clone().requires_grad_(true);
      fake_quant(xg, s, p).sum().backward();
      EXPECT_TRUE(at::equal(xg.grad(), at::ones_like(x))) << xg.grad();
    }
}

TEST(PowerOfTwoFactor, UniformPerChannelWithPowerOfTwoSteps) {
  at::manual_seed(3);
  auto x = at::randn({4, 10, 16}) * at::exp2(at::randint(0, 4, {16}).to(at::kFloat));
  QuantSpec s;
  s.kind = QuantKind::PowerOfTwoFactor;
  s.bits = 8;
  s.symmetric = false;
  s.is_signed = false;
  s.granularity = Granularity::PerChannel;
  s.axis = 2;
  auto alpha = at::randint(0, 4, {1, 1, 16});
  QuantParams p{0.01 * at::exp2(alpha.to(at::kFloat)), at::full({1, 1, 16}, 128.0f), {}};
  EXPECT_EQ(count_ne(fake_quant(x, s, p), fake_quant_reference(x, s, p)), 0);
  EXPECT_TRUE(at::equal(ptf_factors(p.scale), alpha.reshape({-1}).to(at::kLong) - alpha.min().item<int64_t>()));
  EXPECT_THROW(ptf_factors(at::tensor({1.0f, 3.0f})), Error);   // not a power of two
  EXPECT_THROW(ptf_factors(at::tensor({1.0f, 16.0f})), Error);  // α = 4 > 3
  s.granularity = Granularity::PerTensor;
  EXPECT_THROW(s.validate(), Error);
}

TEST(IntExp, MatchesReferenceAndStaysWithinTheDocumentedBound) {
  auto q = at::arange(-6000, 1, at::kLong);
  double worst = 0;
  for (double s = std::ldexp(1.0, -12); s < 3.0; s *= 1.37) {
    IntExp c = int_exp_constants(s);
    auto fast = int_exp(q, c);
    EXPECT_TRUE(at::equal(fast, int_exp_reference(q, c))) << s;
    auto approx = fast.to(at::kDouble) * c.out_scale;
    auto exact = at::exp(q.to(at::kDouble) * s);
    const double err = (approx - exact).abs().max().item<double>();
    worst = std::max(worst, err);
    EXPECT_LE(err, kIntExpMaxAbsError) << "step " << s;
  }
  RecordProperty("int_exp_worst_abs_error", std::to_string(worst));
  std::printf("integer exp: worst |error| %.2e over the tested steps (bound %.0e)\n", worst, kIntExpMaxAbsError);
  EXPECT_THROW(int_exp_constants(0.0), Error);
  EXPECT_THROW(int_exp_constants(std::nan("")), Error);
  EXPECT_THROW(int_exp(at::tensor({int64_t{3}}), int_exp_constants(0.1)), Error);  // positive code
}

TEST(IntSoftmax, MatchesReferenceAndFloatSoftmax) {
  at::manual_seed(4);
  const double step = 0.06;
  auto scores = at::randn({2, 3, 20, 20}) * 3;
  auto codes = at::clamp(at::round(scores / step), -128, 127).to(at::kLong);
  auto xf = codes.to(at::kFloat) * step;
  auto soft = at::softmax(xf, -1);
  // uniform 8-bit output
  auto u8 = kind_spec(QuantKind::Uniform, 8, false);
  auto fast = int_softmax(codes, step, u8);
  EXPECT_EQ(count_ne(fast, int_softmax_reference(codes, step, u8)), 0);
  EXPECT_LE((fast - soft).abs().max().item<double>(), 1.0 / 255 + 0.01);
  // 4-bit log2 output: same codes as the float log2 quantizer of the float softmax, but where the integer
  // ratio's floor or the exp error moves a value across a rounding boundary
  auto l4 = kind_spec(QuantKind::Log2, 4, false);
  auto lfast = int_softmax(codes, step, l4);
  EXPECT_EQ(count_ne(lfast, int_softmax_reference(codes, step, l4)), 0);
  auto lfloat = fake_quant(soft, l4, log2_params());
  const double agree = (lfast == lfloat).to(at::kDouble).mean().item<double>();
  EXPECT_GE(agree, 0.95);
  // where they differ, by one power of two
  auto both = (lfast > 0) & (lfloat > 0) & (lfast != lfloat);
  if (both.any().item<bool>())
    EXPECT_LE((at::log2(lfast.masked_select(both)) - at::log2(lfloat.masked_select(both))).abs().max().item<double>(), 1.0);
  EXPECT_THROW(int_softmax(codes, step, kind_spec(QuantKind::Uniform, 8, true)), Error);
}

TEST(IntSoftmax, LongEvenRows) {
  // 577 tokens (ViT at 384 px), all scores equal, at a step whose working step is just above 2^-11: the row
  // sum passes 2^31 — the log2 ratio is clamped, nothing overflows
  const double step = std::ldexp(1.0, -10) * 1.01;
  auto codes = at::zeros({2, 577}, at::kLong);
  auto l4 = kind_spec(QuantKind::Log2, 4, false);
  auto y = int_softmax(codes, step, l4);
  EXPECT_TRUE(at::equal(y, int_softmax_reference(codes, step, l4)));
  EXPECT_TRUE(at::allclose(y, at::full_like(y, std::ldexp(1.0, -9))));  // round(log2 577) = 9
  auto u8 = kind_spec(QuantKind::Uniform, 8, false);
  EXPECT_TRUE(at::equal(int_softmax(codes, step, u8), int_softmax_reference(codes, step, u8)));
}

TEST(IntLayerNorm, MatchesReferenceAndFloatLayerNorm) {
  at::manual_seed(5);
  const int64_t C = 48;
  auto alpha = at::randint(0, 4, {C}).to(at::kFloat);
  auto in_scale = 0.02 * at::exp2(alpha);
  auto x = at::randn({3, 17, C}) * in_scale * 60 + 0.3;
  const double zp = 120;
  auto codes = at::clamp(at::round(x / in_scale) + zp, 0, 255).to(at::kLong);
  auto xq = (codes.to(at::kFloat) - zp) * in_scale;
  auto gamma = at::rand({C}) + 0.5, beta = at::randn({C}) * 0.2;
  QuantSpec out;
  out.bits = 8;
  out.symmetric = false;
  out.is_signed = false;
  auto ln = at::layer_norm(xq, {C}, gamma, beta, 1e-12);
  QuantParams op = params_from_range(ln.min(), ln.max(), out);
  auto fast = int_layernorm(codes, in_scale, zp, gamma, beta, out, op);
  EXPECT_EQ(count_ne(fast, int_layernorm_reference(codes, in_scale, zp, gamma, beta, out, op)), 0);
  auto ref = fake_quant(ln, out, op);
  const double step = op.scale.item<double>();
  EXPECT_LE((fast - ref).abs().max().item<double>(), step * 1.001);
  EXPECT_GE((fast == ref).to(at::kDouble).mean().item<double>(), 0.99);
  // a constant row: σ = 0, the output is β (quantized)
  auto flat = at::full({1, 1, C}, static_cast<int64_t>(zp));
  auto y = int_layernorm(flat, in_scale, zp, gamma, beta, out, op);
  EXPECT_LE((y.reshape({-1}) - fake_quant(beta, out, op)).abs().max().item<double>(), step * 1.001);
  EXPECT_THROW(int_layernorm(codes, at::full({C}, 0.01) * at::arange(1, C + 1), zp, gamma, beta, out, op), Error);
}
