#include "vitq/graph/executor.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "vitq/graph/kernels.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {

int64_t norm_axis(int64_t axis, int64_t rank) {
  int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) fail("axis {} out of range for rank {}", axis, rank);
  return a;
}

std::vector<int64_t> to_ints(const at::Tensor& t) {
  auto c = t.to(at::kCPU).to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// Integer list from attribute `key`, or else from input slot `slot` (ONNX moved many attributes to inputs).
std::vector<int64_t> ints_from(const Node& n, const std::vector<at::Tensor>& in, const std::string& key,
                               size_t slot, std::vector<int64_t> fallback = {}) {
  if (n.has(key)) return n.getints(key);
  if (in.size() > slot && in[slot].defined()) return to_ints(in[slot]);
  return fallback;
}

at::ScalarType onnx_dtype(int64_t t) {
  switch (t) {
    case 1: return at::kFloat;
    case 6: return at::kInt;
    case 7: return at::kLong;
    case 9: return at::kBool;
    case 10: return at::kHalf;
    case 11: return at::kDouble;
    case 16: return at::kBFloat16;
    default: fail("Cast to ONNX data type {} is not supported", t);
  }
}

// y = x Wᵀ + b as one 2-D GEMM followed by an in-place bias add: faster than addmm with this libtorch and
// OpenBLAS (measured: 8.4 ms vs 10.2 ms for [6304,192]x[192,768] on 2 cores).
at::Tensor linear_mm(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  if (x.dim() < 2) return at::linear(x, w, b);
  auto sizes = x.sizes().vec();
  sizes.back() = w.size(0);
  auto y = at::mm(x.reshape({-1, x.size(-1)}), w.t());
  if (b) y.add_(*b);
  return y.view(sizes);
}

at::Tensor binary(OpKind op, const at::Tensor& a, const at::Tensor& b) {
  switch (op) {
    case OpKind::Add: return at::add(a, b);
    case OpKind::Sub: return at::sub(a, b);
    case OpKind::Mul: return at::mul(a, b);
    case OpKind::Div:
      // ONNX integer division truncates (shape arithmetic); float division is plain.
      if (!a.is_floating_point() && !b.is_floating_point()) return at::div(a, b, "trunc");
      return at::div(a, b);
    case OpKind::Pow: return at::pow(a, b);
    default: fail("not a binary op");
  }
}

// Resize of a [B,C,H,W] tensor to attr `sizes` ([H, W] or [B, C, H, W]) or by attr `scales`, or (ONNX) from
// inputs 3 (sizes) / 2 (scales). Bilinear ("linear") with half_pixel / pytorch_half_pixel / align_corners
// coordinates, or nearest (asymmetric, floor) as torch exports it.
at::Tensor resize(const Node& n, const std::vector<at::Tensor>& in) {
  const auto& x = in.at(0);
  if (x.dim() != 4) fail("node {}: Resize needs a 4-D input", n.name);
  std::vector<int64_t> sizes = n.getints("sizes");
  if (sizes.empty() && in.size() > 3 && in[3].defined() && in[3].numel() > 0) sizes = to_ints(in[3]);
  std::vector<double> scales;
  if (sizes.empty()) {
    if (n.has("scales")) {
      scales = std::get<std::vector<double>>(n.attrs.at("scales"));
    } else if (in.size() > 2 && in[2].defined() && in[2].numel() > 0) {
      auto t = in[2].to(at::kCPU).to(at::kDouble).contiguous();
      scales.assign(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
    }
    if (scales.size() == 4) {
      if (scales[0] != 1.0 || scales[1] != 1.0) fail("node {}: Resize may scale only H and W", n.name);
      scales = {scales[2], scales[3]};
    }
    if (scales.size() != 2) fail("node {}: Resize needs output sizes or scales", n.name);
    for (double sc : scales)
      if (!(sc > 0.0 && sc <= 64.0)) fail("node {}: Resize scale {} is outside (0, 64]", n.name, sc);
    sizes = {static_cast<int64_t>(std::floor(x.size(2) * scales[0])), static_cast<int64_t>(std::floor(x.size(3) * scales[1]))};
  }
  if (sizes.size() == 4) {
    if (sizes[0] != x.size(0) || sizes[1] != x.size(1)) fail("node {}: Resize may change only H and W", n.name);
    sizes = {sizes[2], sizes[3]};
  }
  if (sizes.size() != 2 || sizes[0] <= 0 || sizes[1] <= 0) fail("node {}: bad Resize output size", n.name);
  const std::string mode = n.gets("mode", "linear");
  const std::string coord = n.gets("coordinate_transformation_mode", "half_pixel");
  if (mode == "nearest") return at::upsample_nearest2d(x, sizes);
  if (mode != "linear") fail("node {}: Resize mode {} is not supported", n.name, mode);
  if (coord != "half_pixel" && coord != "pytorch_half_pixel" && coord != "align_corners")
    fail("node {}: Resize coordinate mode {} is not supported", n.name, coord);
  return at::upsample_bilinear2d(x, sizes, coord == "align_corners");
}

}  // namespace

namespace {

// Elements of the broadcast of several shapes (dimension by dimension, the larger size; mismatches are left to the
// op to report). In double: a fuzzed graph's shapes may overflow int64.
double broadcast_elements(const std::vector<c10::IntArrayRef>& shapes) {
  size_t rank = 0;
  for (const auto& s : shapes) rank = std::max(rank, s.size());
  double total = 1.0;
  for (size_t i = 0; i < rank; ++i) {
    int64_t d = 0;
    for (const auto& s : shapes)
      if (i < s.size()) d = std::max(d, s[s.size() - 1 - i]);
    total *= static_cast<double>(std::max<int64_t>(d, 0));
  }
  return total;
}

double product(const std::vector<int64_t>& dims) {
  double total = 1.0;
  for (auto d : dims) total *= static_cast<double>(std::max<int64_t>(d, 0));
  return total;
}

}  // namespace

double output_elements_bound(const Node& n, const std::vector<at::Tensor>& in, int64_t batch) {
  double largest_input = 0.0;
  for (const auto& t : in)
    if (t.defined()) largest_input = std::max(largest_input, static_cast<double>(t.numel()));
  auto has = [&](size_t i) { return i < in.size() && in[i].defined(); };
  auto dims4 = [&](size_t i) { return has(i) && in[i].dim() == 4; };
  switch (n.op) {
    case OpKind::Add:
    case OpKind::Sub:
    case OpKind::Mul:
    case OpKind::Div:
    case OpKind::Pow:
    case OpKind::Equal:
    case OpKind::Where: {
      std::vector<c10::IntArrayRef> shapes;
      for (const auto& t : in)
        if (t.defined()) shapes.push_back(t.sizes());
      return broadcast_elements(shapes);
    }
    case OpKind::MatMul: {
      if (!has(0) || !has(1) || in[0].dim() == 0 || in[1].dim() == 0) return largest_input;
      const auto a = in[0].sizes(), b = in[1].sizes();
      double m = a.size() >= 2 ? static_cast<double>(a[a.size() - 2]) : 1.0;
      double k = b.size() >= 2 ? static_cast<double>(b[b.size() - 1]) : 1.0;
      auto lead = [](c10::IntArrayRef s) { return s.size() > 2 ? s.slice(0, s.size() - 2) : c10::IntArrayRef(); };
      return broadcast_elements({lead(a), lead(b)}) * m * k;
    }
    case OpKind::Linear:
      if (!has(0) || !has(1) || in[0].dim() == 0 || in[1].dim() == 0 || in[0].size(-1) == 0) return largest_input;
      return static_cast<double>(in[0].numel()) / static_cast<double>(in[0].size(-1)) * static_cast<double>(in[1].size(0));
    case OpKind::Conv2d:
    case OpKind::AvgPool: {
      if (!dims4(0)) return largest_input;
      auto pads = n.getints("pads", {0, 0, 0, 0});
      if (pads.size() != 4) return largest_input;
      const auto& x = in[0];
      double channels = static_cast<double>(x.size(1));
      if (n.op == OpKind::Conv2d && has(1) && in[1].dim() >= 1) channels = std::max(channels, static_cast<double>(in[1].size(0)));
      // ceil_mode may add one row and column
      return static_cast<double>(x.size(0)) * channels * static_cast<double>(x.size(2) + pads[0] + pads[2] + 1) *
             static_cast<double>(x.size(3) + pads[1] + pads[3] + 1);
    }
    case OpKind::Pad: {
      if (!has(0)) return largest_input;
      auto pads = ints_from(n, in, "pads", 1);
      const auto rank = static_cast<size_t>(in[0].dim());
      if (pads.size() != 2 * rank) return largest_input;
      std::vector<int64_t> dims(in[0].sizes().begin(), in[0].sizes().end());
      for (size_t a = 0; a < rank; ++a) dims[a] += pads[a] + pads[a + rank];
      return product(dims);
    }
    case OpKind::Resize: {
      if (!dims4(0)) return largest_input;
      std::vector<int64_t> sizes = n.getints("sizes");
      if (sizes.empty() && has(3) && in[3].numel() > 0) sizes = to_ints(in[3]);
      double nc = static_cast<double>(in[0].size(0)) * static_cast<double>(in[0].size(1));
      if (sizes.size() >= 2) return nc * product({sizes[sizes.size() - 2], sizes[sizes.size() - 1]});
      return static_cast<double>(in[0].numel()) * 64.0 * 64.0;  // scales are at most 64 (resize() checks)
    }
    case OpKind::ConstantOfShape: return has(0) ? product(to_ints(in[0])) : largest_input;
    case OpKind::Expand: {
      if (!has(0)) return largest_input;
      std::vector<int64_t> shape;
      if (n.has("shape")) shape = ShapeSpec{n.getints("shape"), n.getints("batch_mult")}.resolve(batch);
      else if (has(1)) shape = to_ints(in[1]);
      return broadcast_elements({in[0].sizes(), c10::IntArrayRef(shape)});
    }
    case OpKind::Gather: {
      if (!has(0) || !has(1) || in[0].dim() == 0) return largest_input;
      int64_t axis = n.geti("axis", 0);
      axis = axis < 0 ? axis + in[0].dim() : axis;
      if (axis < 0 || axis >= in[0].dim() || in[0].size(axis) == 0) return largest_input;
      return static_cast<double>(in[0].numel()) / static_cast<double>(in[0].size(axis)) * static_cast<double>(in[1].numel());
    }
    case OpKind::Concat: {
      double total = 0.0;
      for (const auto& t : in)
        if (t.defined()) total += static_cast<double>(t.numel());
      return total;
    }
    default: return largest_input;  // elementwise, reductions, views, normalisations: no larger than an input
  }
}

std::vector<at::Tensor> run_node(const Node& n, const std::vector<at::Tensor>& in, int64_t batch) {
  auto arg = [&](size_t i) -> const at::Tensor& {
    if (i >= in.size() || !in[i].defined()) fail("node {} ({}): missing input {}", n.name, op_name(n.op), i);
    return in[i];
  };
  auto opt = [&](size_t i) -> c10::optional<at::Tensor> {
    if (i < in.size() && in[i].defined()) return in[i];
    return c10::nullopt;
  };
  switch (n.op) {
    case OpKind::Conv2d: {
      auto pads = n.getints("pads", {0, 0, 0, 0});
      auto strides = n.getints("strides", {1, 1});
      auto dil = n.getints("dilations", {1, 1});
      at::Tensor x = arg(0);
      if (pads.size() != 4) fail("node {}: Conv2d needs 4 pads", n.name);
      if (pads[0] != pads[2] || pads[1] != pads[3]) {  // asymmetric: pad explicitly (left, right, top, bottom)
        x = at::constant_pad_nd(x, {pads[1], pads[3], pads[0], pads[2]}, 0);
        pads = {0, 0, 0, 0};
      }
      return {at::conv2d(x, arg(1), opt(2), strides, {pads[0], pads[1]}, dil, n.geti("group", 1))};
    }
    case OpKind::Linear: return {linear_mm(arg(0), arg(1), opt(2))};
    case OpKind::MatMul: return {at::matmul(arg(0), arg(1))};
    case OpKind::Add:
    case OpKind::Sub:
    case OpKind::Mul:
    case OpKind::Div:
    case OpKind::Pow: return {binary(n.op, arg(0), arg(1))};
    case OpKind::Sqrt: return {at::sqrt(arg(0))};
    case OpKind::Erf: return {at::erf(arg(0))};
    case OpKind::ReduceMean: {
      auto axes = ints_from(n, in, "axes", 1);
      if (axes.empty())
        for (int64_t i = 0; i < arg(0).dim(); ++i) axes.push_back(i);
      return {at::mean(arg(0), axes, n.geti("keepdims", 1) != 0)};
    }
    case OpKind::Softmax: {
      const int64_t axis = n.geti("axis", -1);
      if (axis == -1 || axis == arg(0).dim() - 1) return {softmax_lastdim(arg(0))};
      return {at::softmax(arg(0), axis)};
    }
    case OpKind::LayerNorm: {
      const auto& x = arg(0);
      int64_t axis = norm_axis(n.geti("axis", -1), x.dim());
      std::vector<int64_t> shape(x.sizes().begin() + axis, x.sizes().end());
      return {at::layer_norm(x, shape, opt(1), opt(2), n.getf("epsilon", 1e-5))};
    }
    case OpKind::Gelu:
      // our vectorised kernel has no backward: autograd (PTQ4ViT's gradients) takes libtorch's
      if (n.gets("approximate", "none") == "none" && !(at::GradMode::is_enabled() && arg(0).requires_grad()))
        return {gelu_erf(arg(0))};
      return {at::gelu(arg(0), n.gets("approximate", "none"))};
    case OpKind::Relu: return {at::relu(arg(0))};
    case OpKind::Sigmoid: return {at::sigmoid(arg(0))};
    case OpKind::Tanh: return {at::tanh(arg(0))};
    case OpKind::SiLU: return {at::silu(arg(0))};
    case OpKind::BatchNorm:
      return {at::batch_norm(arg(0), opt(1), opt(2), opt(3), opt(4), false, 0.0, n.getf("epsilon", 1e-5), false)};
    case OpKind::GroupNorm: {
      int64_t groups = n.geti("num_groups", 1);
      if (groups <= 0 || arg(0).size(1) % groups != 0)
        fail("node {}: GroupNorm with {} groups over {} channels", n.name, groups, arg(0).size(1));
      return {at::group_norm(arg(0), groups, opt(1), opt(2), n.getf("epsilon", 1e-5), false)};
    }
    case OpKind::InstanceNorm:
      return {at::instance_norm(arg(0), opt(1), opt(2), {}, {}, true, 0.0, n.getf("epsilon", 1e-5), false)};
    case OpKind::HardSwish: return {at::hardswish(arg(0))};
    case OpKind::HardSigmoid:
      return {at::clamp(arg(0) * n.getf("alpha", 0.2) + n.getf("beta", 0.5), 0.0, 1.0)};
    case OpKind::AvgPool: {
      auto k = n.getints("kernel_shape");
      auto strides = n.getints("strides", {1, 1});  // ONNX AveragePool's default
      auto pads = n.getints("pads", {0, 0, 0, 0});
      if (k.size() != 2 || strides.size() != 2 || pads.size() != 4) fail("node {}: AvgPool needs 2-D kernel, strides and 4 pads", n.name);
      if (pads[0] != pads[2] || pads[1] != pads[3]) fail("node {}: AvgPool with asymmetric pads is not supported", n.name);
      return {at::avg_pool2d(arg(0), k, strides, {pads[0], pads[1]}, n.geti("ceil_mode", 0) != 0,
                             n.geti("count_include_pad", 0) != 0)};
    }
    case OpKind::GlobalAvgPool: return {at::mean(arg(0), {2, 3}, true)};
    case OpKind::ReduceSum: {
      auto axes = ints_from(n, in, "axes", 1);
      if (axes.empty())
        for (int64_t i = 0; i < arg(0).dim(); ++i) axes.push_back(i);
      return {at::sum(arg(0), axes, n.geti("keepdims", 1) != 0)};
    }
    case OpKind::Roll: return {at::roll(arg(0), n.getints("shifts"), n.getints("dims"))};
    case OpKind::Pad: {
      const auto& x = arg(0);
      auto pads = ints_from(n, in, "pads", 1);
      const auto rank = static_cast<size_t>(x.dim());
      if (pads.size() != 2 * rank) fail("node {}: Pad needs {} pads for rank {}, got {}", n.name, 2 * rank, rank, pads.size());
      if (n.gets("mode", "constant") != "constant") fail("node {}: only constant Pad is supported", n.name);
      std::vector<int64_t> torch_pads;  // last axis first: (begin, end) pairs
      for (size_t a = rank; a-- > 0;) {
        torch_pads.push_back(pads[a]);
        torch_pads.push_back(pads[a + rank]);
      }
      return {at::constant_pad_nd(x, torch_pads, n.getf("value", 0.0))};
    }
    case OpKind::Resize: return {resize(n, in)};
    case OpKind::Reshape: {
      const auto& x = arg(0);
      std::vector<int64_t> shape;
      if (n.has("shape")) shape = ShapeSpec{n.getints("shape"), n.getints("batch_mult")}.resolve(batch);
      else shape = to_ints(arg(1));
      if (n.geti("allowzero", 0) == 0)
        for (size_t i = 0; i < shape.size(); ++i)
          if (shape[i] == 0) shape[i] = x.size(static_cast<int64_t>(i));
      return {x.reshape(shape)};
    }
    case OpKind::Flatten: {
      const auto& x = arg(0);
      int64_t axis = n.geti("axis", 1);
      if (axis < 0) axis += x.dim();
      int64_t outer = 1;
      for (int64_t i = 0; i < axis; ++i) outer *= x.size(i);
      return {x.reshape({outer, -1})};
    }
    case OpKind::Transpose: {
      auto perm = n.getints("perm");
      if (perm.empty())
        for (int64_t i = arg(0).dim() - 1; i >= 0; --i) perm.push_back(i);
      return {arg(0).permute(perm)};
    }
    case OpKind::Concat: {
      std::vector<at::Tensor> parts;
      for (size_t i = 0; i < in.size(); ++i) parts.push_back(arg(i));
      return {at::cat(parts, n.geti("axis", 0))};
    }
    case OpKind::Slice: {
      at::Tensor x = arg(0);
      auto starts = ints_from(n, in, "starts", 1), ends = ints_from(n, in, "ends", 2);
      std::vector<int64_t> axes = ints_from(n, in, "axes", 3), steps = ints_from(n, in, "steps", 4);
      if (axes.empty())
        for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
      if (steps.empty()) steps.assign(starts.size(), 1);
      if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
        fail("node {}: Slice starts, ends, axes and steps differ in length", n.name);
      for (size_t i = 0; i < starts.size(); ++i) {
        int64_t ax = norm_axis(axes[i], x.dim()), dim = x.size(ax);
        int64_t s = starts[i] < 0 ? starts[i] + dim : starts[i];
        int64_t e = ends[i] < 0 ? ends[i] + dim : ends[i];
        if (steps[i] <= 0) fail("node {}: Slice with step {} is not supported", n.name, steps[i]);
        s = std::clamp<int64_t>(s, 0, dim);
        e = std::clamp<int64_t>(e, 0, dim);
        x = x.slice(ax, s, std::max(s, e), steps[i]);
      }
      return {x};
    }
    case OpKind::Gather: {
      const auto& x = arg(0);
      int64_t axis = norm_axis(n.geti("axis", 0), x.dim());
      at::Tensor idx = arg(1).to(x.device()).to(at::kLong);
      idx = at::where(idx < 0, idx + x.size(axis), idx);
      if (idx.dim() == 0) return {x.select(axis, idx.item<int64_t>())};
      auto flat = at::index_select(x, axis, idx.flatten());
      std::vector<int64_t> shape(x.sizes().begin(), x.sizes().begin() + axis);
      for (auto d : idx.sizes()) shape.push_back(d);
      shape.insert(shape.end(), x.sizes().begin() + axis + 1, x.sizes().end());
      return {flat.reshape(shape)};
    }
    case OpKind::Split: {
      const auto& x = arg(0);
      int64_t axis = norm_axis(n.geti("axis", 0), x.dim());
      auto sizes = ints_from(n, in, "split", 1);
      size_t parts = n.outputs.size();
      if (sizes.empty()) {
        if (x.size(axis) % static_cast<int64_t>(parts) != 0) fail("node {}: uneven Split", n.name);
        sizes.assign(parts, x.size(axis) / static_cast<int64_t>(parts));
      }
      auto out = at::split_with_sizes(x, sizes, axis);
      return std::vector<at::Tensor>(out.begin(), out.end());
    }
    case OpKind::Squeeze: {
      at::Tensor x = arg(0);
      auto axes = ints_from(n, in, "axes", 1);
      if (axes.empty()) return {x.squeeze()};
      for (auto& a : axes) a = norm_axis(a, x.dim());
      std::sort(axes.rbegin(), axes.rend());
      for (auto a : axes) x = x.squeeze(a);
      return {x};
    }
    case OpKind::Unsqueeze: {
      at::Tensor x = arg(0);
      auto axes = ints_from(n, in, "axes", 1);
      int64_t rank = x.dim() + static_cast<int64_t>(axes.size());
      for (auto& a : axes) a = a < 0 ? a + rank : a;
      std::sort(axes.begin(), axes.end());
      for (auto a : axes) x = x.unsqueeze(a);
      return {x};
    }
    case OpKind::Expand: {
      const auto& x = arg(0);
      std::vector<int64_t> shape;
      if (n.has("shape")) shape = ShapeSpec{n.getints("shape"), n.getints("batch_mult")}.resolve(batch);
      else shape = to_ints(arg(1));
      // ONNX Expand broadcasts both ways: the result has the broadcast shape of x and `shape`.
      int64_t rank = std::max<int64_t>(x.dim(), static_cast<int64_t>(shape.size()));
      std::vector<int64_t> target(static_cast<size_t>(rank));
      for (int64_t i = 0; i < rank; ++i) {
        int64_t xi = i - (rank - x.dim()), si = i - (rank - static_cast<int64_t>(shape.size()));
        int64_t a = xi >= 0 ? x.size(xi) : 1, b = si >= 0 ? shape[static_cast<size_t>(si)] : 1;
        target[static_cast<size_t>(i)] = (a == 1) ? b : a;
      }
      return {x.expand(target)};
    }
    case OpKind::Identity: return {arg(0)};
    case OpKind::Shape: {
      auto sizes = arg(0).sizes();
      return {at::tensor(std::vector<int64_t>(sizes.begin(), sizes.end()), at::kLong)};
    }
    case OpKind::Cast: return {arg(0).to(onnx_dtype(n.geti("to", 1)))};
    case OpKind::ConstantOfShape: {
      auto shape = to_ints(arg(0));
      double value = n.getf("value", 0.0);
      auto dtype = onnx_dtype(n.geti("dtype", 1));
      return {at::full(shape, value, at::TensorOptions().dtype(dtype))};
    }
    case OpKind::Equal: return {at::eq(arg(0), arg(1))};
    case OpKind::Where: return {at::where(arg(0), arg(1), arg(2))};
  }
  fail("node {}: op {} is not executable", n.name, op_name(n.op));
}

Executor::Executor(const Graph& graph, c10::Device device) : graph_(graph), device_(device) {
  graph_.validate();
  if (device_.is_cuda()) {
    // FP32 on the GPU too: cuDNN's convolutions default to TF32 (a 10-bit mantissa), which moved DeiT-Tiny's
    // logits by up to 0.026 from timm's; with it off, 2.5e-5 (the CPU: 1e-5). scripts/gpu/check.sh,
    // bench/results/gpu_h200_check.md.
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  consts_.resize(graph_.values.size());
  for (size_t v = 0; v < graph_.values.size(); ++v)
    if (graph_.consts[v].defined()) {
      const auto& t = graph_.consts[v];
      // integer constants (indices, shapes) stay on the CPU; they are read as lists
      consts_[v] = t.is_floating_point() ? t.to(device_) : t;
    }
  last_use_.assign(graph_.values.size(), -1);
  for (size_t i = 0; i < graph_.nodes.size(); ++i)
    for (int v : graph_.nodes[i].inputs)
      if (v >= 0) last_use_[static_cast<size_t>(v)] = static_cast<int>(i);
  linear_.resize(graph_.nodes.size());
  matmul_.resize(graph_.nodes.size());
  fuse_gelu_.assign(graph_.nodes.size(), 0);
  if (device_.is_cpu()) {
    auto readers = graph_.consumers();
    for (size_t i = 0; i < graph_.nodes.size(); ++i) {
      const Node& n = graph_.nodes[i];
      if (n.op == OpKind::MatMul) matmul_[i] = std::make_unique<DnnlMatMul>();
      if (n.op != OpKind::Linear) continue;
      linear_[i] = std::make_unique<DnnlLinear>();
      if (i + 1 < graph_.nodes.size()) {
        const Node& next = graph_.nodes[i + 1];
        const int out = n.outputs[0];
        fuse_gelu_[i] = next.op == OpKind::Gelu && next.gets("approximate", "none") == "none" && next.inputs.size() == 1 &&
                        next.inputs[0] == out && readers[static_cast<size_t>(out)].size() == 1 && out != graph_.output;
      }
    }
  }
}

namespace {
// Runs one node; a library error (libtorch's "Dimension out of range", an allocation failure) comes out naming
// the layer instead of as raw library text.
template <class F>
void naming_layer(const Node& n, F&& run) {
  try {
    run();
  } catch (const Error& e) {  // ours: add the layer unless the message names it already
    if (std::string(e.what()).find(n.name) != std::string::npos) throw;
    fail("layer {} ({}): {}", n.name, op_name(n.op), e.what());
  } catch (const c10::Error& e) {
    fail("layer {} ({}): {}", n.name, op_name(n.op), first_line(e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    fail("layer {} ({}): out of memory", n.name, op_name(n.op));
  }
}
}  // namespace

std::vector<at::Tensor> Executor::execute(const at::Tensor& input, const ExecHooks* hooks, bool keep_all) const {
  if (input.dim() != 4 || input.size(1) != 3)
    fail("model input must be [B, 3, H, W], got {}", fmt::join(input.sizes(), "x"));
  std::vector<at::Tensor> vals = consts_;
  vals[static_cast<size_t>(graph_.input)] = input.to(device_, at::kFloat);
  const int64_t batch = input.size(0);
  std::vector<at::Tensor> args;
  for (size_t i = 0; i < graph_.nodes.size(); ++i) {
    const Node& n = graph_.nodes[i];
    // (fuse_gelu_[i] implies a node i + 1; ask the hooks only then)
    if (!keep_all && fuse_gelu_[i] &&
        (!hooks || (hooks->allow_fusion && !hooks->on_output && hooks->allow_fusion(n, graph_.nodes[i + 1])))) {  // Linear + GELU as one GEMM
      auto get = [&](size_t s) {
        at::Tensor t = s < n.inputs.size() && n.inputs[s] >= 0 ? vals[static_cast<size_t>(n.inputs[s])] : at::Tensor();
        if (hooks && hooks->transform_input && t.defined() && t.is_floating_point()) t = hooks->transform_input(n, s, t);
        return t;
      };
      at::Tensor x = get(0), w = get(1), b = get(2);
      c10::optional<at::Tensor> bias = b.defined() ? c10::optional<at::Tensor>(b) : c10::nullopt;
      if (x.defined() && w.defined() && DnnlLinear::usable(x, w, bias)) {
        vals[static_cast<size_t>(graph_.nodes[i + 1].outputs[0])] = linear_[i]->run(x, w, bias, /*gelu=*/true);
        release_dead(vals, i);
        ++i;
        continue;
      }
    }
    naming_layer(n, [&] { run_one(i, vals, args, batch, hooks); });
    if (!keep_all) release_dead(vals, i);
  }
  return vals;
}

void Executor::release_dead(std::vector<at::Tensor>& vals, size_t i) const {
  // a node's inputs are read by it or later (dead when it was the last reader); its outputs only later (dead when
  // nobody reads them, last use -1)
  auto release = [&](int v) {
    if (v >= 0 && v != graph_.output && !graph_.is_const(v) && last_use_[static_cast<size_t>(v)] <= static_cast<int>(i))
      vals[static_cast<size_t>(v)].reset();
  };
  const Node& n = graph_.nodes[i];
  for (int v : n.inputs) release(v);
  for (int v : n.outputs) release(v);
}

void Executor::run_one(size_t i, std::vector<at::Tensor>& vals, std::vector<at::Tensor>& args, int64_t batch,
                       const ExecHooks* hooks) const {
  const Node& n = graph_.nodes[i];
  args.clear();
  for (size_t s = 0; s < n.inputs.size(); ++s) {
    int v = n.inputs[s];
    at::Tensor t = v >= 0 ? vals[static_cast<size_t>(v)] : at::Tensor();
    if (hooks && hooks->transform_input && t.defined() && t.is_floating_point()) t = hooks->transform_input(n, s, t);
    args.push_back(std::move(t));
  }
  std::vector<at::Tensor> outs;
  if (hooks && hooks->replace) outs = hooks->replace(n, args);
  if (outs.empty() && linear_[i] && args.size() >= 2 && args[0].defined() && args[1].defined()) {
    c10::optional<at::Tensor> bias = args.size() > 2 && args[2].defined() ? c10::optional<at::Tensor>(args[2]) : c10::nullopt;
    if (DnnlLinear::usable(args[0], args[1], bias)) outs = {linear_[i]->run(args[0], args[1], bias, false)};
  }
  if (outs.empty() && matmul_[i] && args.size() == 2 && args[0].defined() && args[1].defined() && DnnlMatMul::usable(args[0], args[1]))
    outs = {matmul_[i]->run(args[0], args[1])};
  if (outs.empty()) outs = run_node(n, args, batch);
  if (outs.size() != n.outputs.size()) fail("node {}: produced {} outputs, expected {}", n.name, outs.size(), n.outputs.size());
  if (hooks && hooks->on_output) hooks->on_output(n, outs);
  for (size_t k = 0; k < outs.size(); ++k) vals[static_cast<size_t>(n.outputs[k])] = std::move(outs[k]);
}

void Executor::run_range(std::vector<at::Tensor>& vals, size_t begin, size_t end, int64_t batch, const ExecHooks* hooks,
                         bool free_dead) const {
  if (vals.size() != graph_.values.size()) fail("run_range: {} values given, the graph has {}", vals.size(), graph_.values.size());
  if (begin > end || end > graph_.nodes.size()) fail("run_range: nodes [{}, {}) outside the graph's {}", begin, end, graph_.nodes.size());
  std::vector<at::Tensor> args;
  for (size_t i = begin; i < end; ++i) {
    for (int v : graph_.nodes[i].inputs)
      if (v >= 0 && !vals[static_cast<size_t>(v)].defined())
        fail("run_range: node {} reads {}, which was not given", graph_.nodes[i].name, graph_.values[static_cast<size_t>(v)].name);
    naming_layer(graph_.nodes[i], [&] { run_one(i, vals, args, batch, hooks); });
    if (free_dead) release_dead(vals, i);
  }
}

at::Tensor Executor::run(const at::Tensor& input, const ExecHooks* hooks) const {
  return execute(input, hooks, false)[static_cast<size_t>(graph_.output)];
}

std::vector<at::Tensor> Executor::run_all(const at::Tensor& input, const ExecHooks* hooks) const {
  return execute(input, hooks, true);
}

}  // namespace vitq
