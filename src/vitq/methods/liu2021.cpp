// Liu, Wang, Han, Zhang, Ma, Gao. "Post-Training Quantization for Vision Transformer". NeurIPS 2021.
//
// For every quantized layer l, with FP input X and weight W (for an attention matmul: its two inputs) taken
// from the FP model on the calibration batch, search the quantization steps
//     max_{Δ_W, Δ_X}  Γ(O, Ô) − γ · L_rank(O, Ô)        O = f(X, W),  Ô = f(Q(X; Δ_X), Q(W; Δ_W))
// where Γ is the Pearson correlation of the flattened outputs (cosine as an ablation) and L_rank is only
// used on the q·kᵀ matmul: a pairwise hinge on attention scores whose order flips after quantization,
//     L_rank = mean over sampled pairs (i, j) of  relu(−(Ô_i − Ô_j) · sign(O_i − O_j)) / std(O).
// The search alternates: Δ_W (or the second matmul input) over the grid [0.5, 1.2] · Δ0, then Δ_X, one round,
// Δ0 from min/max. Then bias correction: b ← b − E[Ŵ x̂ − W x], per output channel.
// Mixed precision as published (liu2021+paper): a layer's sensitivity is the nuclear norm of its output feature
// (for the attention matmuls: of the attention scores / output); bits 4..8 in one-bit steps (+mpkl: {4, 6, 8})
// are assigned greedily, most sensitivity-weighted error removed per bit first, under a budget on the average
// weight bits and the average activation bits (weighted by element count; the image's input, 8 bits at any
// budget, outside it), so the model is no larger than a uniform model at that many bits.
// Variant +mpkl (vitq's, experimental): widths are given to each layer's weight and activation input(s)
// separately, and chosen by the model's predictions rather than a proxy. On the first half of the calibration
// images (at most 16), the KL divergence of the predictions from FP32 is measured for every weight (input) at
// every width with everything else at the uniform width the budget allows (min/max steps). From that uniform
// model, swaps at an unchanged budget (one weight or input up a width, one at least as large down) are ranked
// by the error they are measured to remove, and a swap is kept only if the whole model's KL on those images
// falls. The result is kept only if its KL is also lower than the uniform model's on the other half (at most 16
// images, which chose nothing); otherwise the model stays uniform.
// vitq's two fixes, on by default since issue 11 (the variant liu2021+paper turns both off and is the paper's
// method as published: its search alone, the nuclear-norm allocation):
// The KL check (MethodOptions::kl_check; +klcheck names it): after the search, each kind of input keeps min/max's
// steps where the model's KL says they are better (check_against_minmax below).
// Kind-wise mixed precision (mp_sensitivity "kind"; +mpkind names it): the layers of one kind (the same name but
// for the block numbers, the same op, its input made by the same op: all 12 qkv layers, ...) share a width, their
// weights and their inputs apart. A kind's error at each width 4..8 is the model's KL from FP32 on all the
// calibration images with that kind alone quantized (everything else FP), each layer's range clipped at the best
// of {1, 0.9, ..., 0.5} by its output's similarity (the method's), since the method searches the steps after the
// allocation and min/max's error is not what the search leaves (clipping removes most of the post-GELU and softmax
// inputs' error and adds to the post-LayerNorm inputs', whose outlier channels it cuts); with the KL check on, the
// lower of that and min/max's KL, as the check will leave it. Then the same greedy as the nuclear norm's, from 4
// bits, most KL removed per bit of budget first, no width bought that does not lower the KL. Per kind and over
// all the images, the measurement is a few dozen forward passes and steady; per layer on half the images
// (+mpkl) it was noise.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <unordered_map>

#include "vitq/graph/executor.h"
#include "vitq/methods/method.h"
#include "vitq/methods/search.h"
#include "vitq/quant/calibration.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

using search::Range;
using search::range_of;
using search::scaled;

double similarity(const at::Tensor& o, const at::Tensor& q, bool pearson) {
  auto a = o.flatten(), b = q.flatten();
  if (pearson) {
    a = a - a.mean();
    b = b - b.mean();
  }
  const double den = a.norm().item<double>() * b.norm().item<double>();
  return den > 0 ? (a * b).sum().item<double>() / den : 0.0;
}

struct RankPairs {
  at::Tensor i, j;  // key indices along the last dimension
};

double ranking_loss(const at::Tensor& o, const at::Tensor& q, const RankPairs& pairs) {
  auto oi = o.index_select(-1, pairs.i), oj = o.index_select(-1, pairs.j);
  auto qi = q.index_select(-1, pairs.i), qj = q.index_select(-1, pairs.j);
  const double sd = o.std().item<double>();
  if (sd == 0) return 0.0;
  return at::relu(-(qi - qj) * at::sign(oi - oj)).mean().item<double>() / sd;
}

const Node& node_named(const Graph& g, const std::string& name) {
  if (const Node* n = g.find_node(name)) return *n;
  fail("no node {}", name);
}

// Quantized output of node n with the given parameters (undefined params = slot left FP).
at::Tensor quantized_output(const Node& n, std::vector<at::Tensor> args, const QuantPoint* p0, const QuantParams& q0,
                            const QuantPoint* p1, const QuantParams& q1, int64_t batch) {
  if (p0) args[0] = fake_quant(args[0], p0->spec, q0);
  if (p1) args[1] = fake_quant(args[1], p1->spec, q1);
  return run_node(n, args, batch)[0];
}

// Nuclear norm of a layer's output (the rows of up to 4 images), averaged over images and heads.
double nuclear_norm(const Node& n, const at::Tensor& out) {
  const auto& o = out;
  at::Tensor mats;
  if (n.op == OpKind::Conv2d) mats = o.flatten(2);                        // [b, C, HW]
  else if (o.dim() == 4) mats = o.flatten(0, 1);                           // [b*H, N, M]
  else if (o.dim() == 3) mats = o;                                         // [b, N, C]
  else mats = o.unsqueeze(0);                                              // [1, b, C]
  return at::linalg_svdvals(mats.to(at::kDouble)).sum(-1).mean().item<double>();
}

// The model's log-probabilities on imgs, in double (hooks: null for none), and the mean over images of KL(ref ‖ logp)
// from two such: what the mixed-precision allocations and the +klcheck check measure a configuration by.
at::Tensor log_probs(const Executor& ex, const at::Tensor& imgs, const ExecHooks* hooks = nullptr) {
  return at::log_softmax(ex.run(imgs, hooks).to(at::kDouble), -1);
}
double mean_kl(const at::Tensor& ref_logp, const at::Tensor& logp) {
  return (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean().item<double>();
}

// A layer's kind: its name with the block numbers as '*', the tag (which of its inputs: W, A, ...), its op and the op
// that makes its first input (a conv fc1 fed by the residual stream and a Linear fc1 fed by a LayerNorm,
// EfficientFormer's two kinds of block, are not one kind): "blocks.*.attn.qkv A (Linear after LayerNorm)".
std::string kind_name(const Graph& g, const Node& n, const std::string& tag) {
  std::string key;
  size_t from = 0;
  while (from <= n.name.size()) {
    const size_t dot = std::min(n.name.find('.', from), n.name.size());
    const std::string part = n.name.substr(from, dot - from);
    const bool number = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    key += (from ? "." : "") + (number ? std::string("*") : part);
    from = dot + 1;
  }
  const int producer = n.inputs[0] >= 0 ? g.values[static_cast<size_t>(n.inputs[0])].producer : -1;
  return key + " " + tag + " (" + op_name(n.op) + " after " + (producer >= 0 ? op_name(g.nodes[static_cast<size_t>(producer)].op) : "input") + ")";
}

// Greedy bit allocation under the average-bits budget: bits per quantization point (layer, slot), and what
// decided them (plan settings).
struct Allocation {
  std::map<std::pair<std::string, int>, int> bits;
  nlohmann::json info = nlohmann::json::object();
};

Allocation allocate_bits(const Graph& g, const LayerTensors& t, const MethodOptions& o,
                         const std::vector<std::string>& layers, const at::Tensor& calib) {
  const int64_t images = calib.size(0);
  if (o.mp_sensitivity != "nuclear" && o.mp_sensitivity != "kl" && o.mp_sensitivity != "kind")
    fail("mixed-precision sensitivity must be nuclear, kl or kind, got '{}'", o.mp_sensitivity);
  const bool kl = o.mp_sensitivity == "kl", kindwise = o.mp_sensitivity == "kind";
  // nuclear: every width from 4 to 8, so that a layer the budget moves costs one bit of precision, not two
  // (a 4-bit activation has four times a 6-bit one's error); kl measures each width, so it keeps three
  const std::vector<int> choices = kl ? std::vector<int>{4, 6, 8} : std::vector<int>{4, 5, 6, 7, 8};
  if (o.avg_bits < choices.front() || o.avg_bits > choices.back())
    fail("--avg-bits must be between {} and {}, got {}", choices.front(), choices.back(), o.avg_bits);
  // The min/max quantizers of every layer's two slots at every choice (placements per choice computed once).
  struct Slots {
    const QuantPoint* p[2] = {nullptr, nullptr};
    QuantParams q[2];
    QuantParams minmax[2];       // kind: min/max's, which the KL check may put back after the search
    bool clipped[2] = {false, false};
  };
  std::vector<std::vector<QuantPoint>> placements;
  for (int bits : choices) {
    PlacementOptions po = o.placement;
    po.wbits = po.abits = bits;
    po.layer_bits.clear();
    po.layer_wbits.clear();
    po.layer_abits.clear();
    po.keep_fp.clear();
    placements.push_back(default_placement(g, po));
  }
  std::vector<std::vector<Slots>> at(layers.size());  // [layer][choice]
  // What the allocation assigns a width to: a layer's slots together (nuclear: the paper's one width a layer),
  // or (kl) its weight and its activation input(s) separately, so that a weight can go to 4 bits without its
  // input. The image's input to the patch embedding stays at 8 bits as placed.
  struct Item {
    size_t layer;
    bool slot[2];
    double sens = 1, wsize = 0, asize = 0;
    std::vector<double> err;  // per choice: nuclear: 1 - Pearson of the layer's output; kl: the model's KL
    size_t pick = 0;
  };
  auto item = [](size_t layer, bool s0, bool s1) {
    Item it;
    it.layer = layer;
    it.slot[0] = s0;
    it.slot[1] = s1;
    return it;
  };
  std::vector<Item> items;
  double wtotal = 0, atotal = 0;
  for (size_t li = 0; li < layers.size(); ++li) {
    const auto& name = layers[li];
    const Node& n = node_named(g, name);
    const auto& args = t.inputs.at(name);
    const auto& out = t.outputs.at(name);
    for (const auto& pts : placements) {
      Slots sl;
      for (const auto& p : pts)
        if (p.node == name) sl.p[p.slot == 0 ? 0 : 1] = &p;
      for (int k = 0; k < 2; ++k) {
        const Range r = range_of(args[static_cast<size_t>(k)], sl.p[k]->spec);
        sl.q[k] = sl.minmax[k] = scaled(r, sl.p[k]->spec, 1.0);
        if (!kindwise || (k == 0 && n.inputs[0] == g.input)) continue;  // the image: 8 bits, never allocated
        // kind: the width's error as a clipping search leaves it (the method searches every width's steps after
        // the allocation, and min/max's error at a width is not what is left of it): the clipping of the min/max
        // range, of a few, that best keeps the layer's output (the method's similarity) with the other input in FP
        double best = -2;
        for (double alpha : {1.0, 0.9, 0.8, 0.7, 0.6, 0.5}) {
          const QuantParams q = scaled(r, sl.p[k]->spec, alpha);
          const at::Tensor qo = quantized_output(n, args, k == 0 ? sl.p[0] : nullptr, q, k == 1 ? sl.p[1] : nullptr, q, out.size(0));
          const double sim = similarity(out, qo, o.similarity == "pearson");
          if (sim > best) {
            best = sim;
            sl.q[k] = q;
            sl.clipped[k] = alpha != 1.0;
          }
        }
      }
      at[li].push_back(sl);
    }
    const bool matmul = n.op == OpKind::MatMul, image_input = n.inputs[0] == g.input;
    const double wsize = matmul ? 0.0 : static_cast<double>(args[1].numel());
    // activation elements per image the budget counts (Swin's window rows and MobileViT's patch rows are several
    // rows an image). The image's input to the patch embedding stays at 8 bits whatever the layer gets, as in the
    // uniform model, so it neither costs nor frees activation budget: counted, it made the patch embedding's
    // upgrade look as dear as 150k activations and left its weights at 4 bits, while the bits it "saved" went to
    // other activations.
    const double asize =
        image_input ? 0.0 : static_cast<double>(args[0].numel() + (matmul ? args[1].numel() : 0)) / static_cast<double>(images);
    if (!kl && !kindwise) {
      Item it = item(li, !image_input, true);
      it.sens = nuclear_norm(n, search::first_rows(out, std::min<int64_t>(4, images), images));
      it.wsize = wsize;
      it.asize = asize;
      for (const auto& sl : at[li])
        it.err.push_back(1.0 - similarity(out, quantized_output(n, args, sl.p[0], sl.q[0], sl.p[1], sl.q[1], out.size(0)), true));
      items.push_back(it);
    } else if (matmul) {
      Item it = item(li, true, true);
      it.asize = asize;
      items.push_back(it);
    } else {
      Item w = item(li, false, true);
      w.wsize = wsize;
      items.push_back(w);
      if (!image_input) {
        Item a = item(li, true, false);
        a.asize = asize;
        items.push_back(a);
      }
    }
    wtotal += wsize;
    atotal += asize;
  }

  // kl: the model's predictions with every item quantized as `assign` says (min/max steps), against FP32's.
  // Each item's error at each choice is measured around the uniform model at the base width (the widest choice
  // not above the budget), with everything else at the base width: the point the allocation moves from, so the
  // interactions of the other layers' errors are in the measure.
  const size_t base = static_cast<size_t>(std::upper_bound(choices.begin(), choices.end(), static_cast<int>(o.avg_bits + 1e-9)) - choices.begin()) - 1;
  std::unique_ptr<Executor> ex;
  // The model's KL from FP32 (ref_logp) on imgs with each listed layer's slot 0 / slot 1 quantized by the given
  // choice's quantizer (null, or a layer not listed: FP).
  // minmax: every listed slot at min/max's steps instead of the clipped ones
  using LayerSlots = std::unordered_map<std::string, std::pair<const Slots*, const Slots*>>;
  auto kl_with = [&](const at::Tensor& imgs, const at::Tensor& ref_logp, const LayerSlots& slots, bool minmax = false) {
    ExecHooks hooks;
    hooks.transform_input = [&](const Node& node, size_t slot, const at::Tensor& x) {
      auto it = slots.find(node.name);
      if (it == slots.end() || slot > 1) return x;
      const Slots* sl = slot == 0 ? it->second.first : it->second.second;
      return sl ? fake_quant(x, sl->p[slot]->spec, minmax ? sl->minmax[slot] : sl->q[slot]) : x;
    };
    return mean_kl(ref_logp, log_probs(*ex, imgs, &hooks));
  };
  // items set as `assign` says on top of `slots`
  auto assign_items = [&](LayerSlots& slots, const std::vector<size_t>& which, const std::function<size_t(size_t)>& choice) {
    for (size_t i : which) {
      auto& e = slots[layers[items[i].layer]];
      if (items[i].slot[0]) e.first = &at[items[i].layer][choice(i)];
      if (items[i].slot[1]) e.second = &at[items[i].layer][choice(i)];
    }
  };
  std::vector<size_t> all_items(items.size());
  for (size_t i = 0; i < items.size(); ++i) all_items[i] = i;
  auto model_kl = [&](const at::Tensor& imgs, const at::Tensor& ref_logp, const std::vector<size_t>& assign) {
    LayerSlots slots;
    for (size_t li = 0; li < layers.size(); ++li) slots[layers[li]] = {&at[li][base], &at[li][base]};
    assign_items(slots, all_items, [&](size_t i) { return assign[i]; });
    return kl_with(imgs, ref_logp, slots);
  };
  // kl: half the calibration images (at most 16) score, the other half (at most 16) check; the KL of a few images
  // is dominated by whichever one flips, and 8 proved too few
  const int64_t sub = std::min<int64_t>(16, std::max<int64_t>(1, images / 2));
  const int64_t held = std::min<int64_t>(images - sub, 16);
  at::Tensor score_imgs, score_ref;
  if (kl) {
    ex = std::make_unique<Executor>(g);
    score_imgs = calib.narrow(0, 0, sub);
    score_ref = log_probs(*ex, score_imgs);
    std::vector<size_t> assign(items.size(), base);
    const double base_kl = model_kl(score_imgs, score_ref, assign);
    Progress bar("liu2021 bit allocation (model KL per weight/input and width)", items.size(), o.progress);
    for (size_t i = 0; i < items.size(); ++i) {
      for (size_t c = 0; c < choices.size(); ++c) {
        assign[i] = c;
        items[i].err.push_back(c == base ? base_kl : model_kl(score_imgs, score_ref, assign));
      }
      assign[i] = base;
      bar.update(i + 1, layers[items[i].layer]);
    }
    bar.finish();
    if (o.progress)
      std::fprintf(stderr, "liu2021 bit allocation: KL %.4f with everything at %d bits (%lld images)\n", base_kl, choices[base],
                   static_cast<long long>(sub));
  }

  // kind: the layers of one kind (the same name but for the block numbers, the same op, its input made by the same
  // op) share a width, their weights and their inputs apart; a kind's error at a width is the model's KL from FP32
  // on the calibration images with that kind alone quantized (ranges clipped as above) and everything else in FP.
  // With the KL check (the default), which after the search keeps a kind at min/max's steps where the model's KL is
  // lower there, the error is what the check will leave: the lower of the clipped ranges' KL and min/max's. Without
  // it the allocation would pay for widths that undo a clipping the check then removes anyway (the post-LayerNorm
  // inputs: at 6 bits their KL clipped is several times min/max's), and spend the budget where it is not needed.
  std::vector<std::vector<size_t>> kind_items;
  std::vector<std::vector<double>> kind_kl_clipped, kind_kl_minmax;  // kind + KL check: both measures, recorded
  std::vector<Item> kinds;
  std::vector<std::string> names;
  if (kindwise) {
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < items.size(); ++i) {
      const std::string key = kind_name(g, node_named(g, layers[items[i].layer]), items[i].wsize > 0 ? "W" : "A");
      auto [pos, fresh] = index.emplace(key, kinds.size());
      if (fresh) {
        kinds.push_back(item(0, false, false));
        kind_items.emplace_back();
        names.push_back(key);
      }
      Item& k = kinds[pos->second];
      k.wsize += items[i].wsize;
      k.asize += items[i].asize;
      kind_items[pos->second].push_back(i);
    }
    if (o.progress)
      std::fprintf(stderr, "liu2021 bit allocation: %zu kinds of layer for %zu weights and inputs%s\n", kinds.size(), items.size(),
                   2 * kinds.size() > items.size() ? " (few layers share a kind: the widths are measured almost layer by layer)" : "");
    ex = std::make_unique<Executor>(g);
    const at::Tensor ref = log_probs(*ex, calib);
    Progress bar("liu2021 bit allocation (model KL per kind of layer and width)", kinds.size(), o.progress);
    kind_kl_clipped.resize(kinds.size());
    kind_kl_minmax.resize(kinds.size());
    for (size_t k = 0; k < kinds.size(); ++k) {
      for (size_t c = 0; c < choices.size(); ++c) {
        LayerSlots slots;  // this kind at choice c, everything else FP
        assign_items(slots, kind_items[k], [c](size_t) { return c; });
        const double clipped = kl_with(calib, ref, slots);
        double err = clipped;
        if (o.kl_check) {
          bool any_clipped = false;
          for (size_t i : kind_items[k])
            for (int s = 0; s < 2; ++s) any_clipped |= items[i].slot[s] && at[items[i].layer][c].clipped[s];
          const double minmax = any_clipped ? kl_with(calib, ref, slots, true) : clipped;
          kind_kl_clipped[k].push_back(clipped);
          kind_kl_minmax[k].push_back(minmax);
          err = std::min(clipped, minmax);
        }
        kinds[k].err.push_back(err);
      }
      bar.update(k + 1, names[k]);
    }
    bar.finish();
  }

  Allocation a;
  a.info["sensitivity"] = o.mp_sensitivity;
  double kl_mixed_scoring = 0;  // kl: the allocation's KL on the scoring images, as the swaps leave it
  // The greedy: from the start width (nuclear: the narrowest; kl: the base), the upgrade removing the most error
  // per bit first, while the budget allows.
  std::vector<Item>& pool = kindwise ? kinds : items;
  const size_t start_pick = kl ? base : 0;
  double wused = 0, aused = 0;
  for (auto& it : pool) {
    it.pick = start_pick;
    wused += it.wsize * choices[start_pick];
    aused += it.asize * choices[start_pick];
  }
  const double wbudget = o.avg_bits * wtotal + 1e-6, abudget = o.avg_bits * atotal + 1e-6;
  for (;;) {
    double best_gain = 0;
    Item* best = nullptr;
    for (auto& it : pool) {
      if (it.pick + 1 >= choices.size()) continue;
      const double db = choices[it.pick + 1] - choices[it.pick];
      if (wused + it.wsize * db > wbudget || aused + it.asize * db > abudget) continue;
      const double gain = it.sens * (it.err[it.pick] - it.err[it.pick + 1]);
      const double cost = db * (it.wsize / std::max(wtotal, 1.0) + it.asize / std::max(atotal, 1.0));
      if ((kl || kindwise) && gain <= 0) continue;  // a measured width that does not lower the error is not bought
      if (gain / cost > best_gain || !best) {
        best_gain = gain / cost;
        best = &it;
      }
    }
    if (!best) break;
    const double db = choices[best->pick + 1] - choices[best->pick];
    wused += best->wsize * db;
    aused += best->asize * db;
    ++best->pick;
  }
  if (kindwise) {
    nlohmann::json widths = nlohmann::json::object();
    for (size_t k = 0; k < kinds.size(); ++k) {
      for (size_t i : kind_items[k]) items[i].pick = kinds[k].pick;
      widths[names[k]] = {{"bits", choices[kinds[k].pick]}, {"kl", kinds[k].err}};
      if (o.kl_check) {
        widths[names[k]]["kl_clipped"] = kind_kl_clipped[k];
        widths[names[k]]["kl_minmax"] = kind_kl_minmax[k];
      }
    }
    a.info["kl_check"] = o.kl_check;  // kind: whether each width's error is the lower of the clipped and min/max KLs
    a.info["kinds"] = widths;
  }

  // kl: then swaps at an unchanged budget — one weight (input) one width up, another weight (input) at least as
  // large one width down — ranked by the error they are measured to remove, each tried on the scoring images with
  // everything else as allocated so far and kept only if the model's KL falls: the measured one-at-a-time
  // errors do not add up (a greedy on them alone made the model worse), so every move is checked as a whole.
  if (kl) {
    std::vector<size_t> cur;
    for (const auto& it : items) cur.push_back(it.pick);
    double cur_kl = model_kl(score_imgs, score_ref, cur);
    std::vector<char> moved(items.size(), 0);
    const int max_rounds = 24, tries = 6;
    int swaps = 0, evaluated = 0;
    for (int round = 0; round < max_rounds; ++round) {
      struct Cand {
        size_t up, down;
        double predicted;
      };
      std::vector<Cand> cands;
      auto size_of = [&](const Item& it) { return it.wsize > 0 ? it.wsize : it.asize; };
      for (size_t u = 0; u < items.size(); ++u) {
        const auto& iu = items[u];
        if (moved[u] || iu.pick + 1 >= choices.size()) continue;
        const double gain = iu.err[iu.pick] - iu.err[iu.pick + 1];
        if (gain <= 0) continue;
        for (size_t d = 0; d < items.size(); ++d) {
          const auto& id = items[d];
          if (d == u || moved[d] || id.pick == 0 || (id.wsize > 0) != (iu.wsize > 0)) continue;
          const double up_bits = (choices[iu.pick + 1] - choices[iu.pick]) * size_of(iu);
          const double down_bits = (choices[id.pick] - choices[id.pick - 1]) * size_of(id);
          if (up_bits > down_bits) continue;
          const double predicted = gain - (id.err[id.pick - 1] - id.err[id.pick]);
          if (predicted > 0) cands.push_back({u, d, predicted});
        }
      }
      if (cands.empty()) break;
      std::sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) { return a.predicted > b.predicted; });
      double best_kl = cur_kl;
      const Cand* best = nullptr;
      for (size_t k = 0; k < cands.size() && k < static_cast<size_t>(tries); ++k) {
        auto trial = cur;
        ++trial[cands[k].up];
        --trial[cands[k].down];
        const double v = model_kl(score_imgs, score_ref, trial);
        ++evaluated;
        if (v < best_kl) {
          best_kl = v;
          best = &cands[k];
        }
      }
      if (!best) break;
      ++items[best->up].pick;
      --items[best->down].pick;
      ++cur[best->up];
      --cur[best->down];
      moved[best->up] = moved[best->down] = 1;
      cur_kl = best_kl;
      ++swaps;
      if (o.progress)
        std::fprintf(stderr, "liu2021 bit allocation: swap %d: %s %s up, %s %s down: KL %.4f\n", swaps, layers[items[best->up].layer].c_str(),
                     items[best->up].wsize > 0 ? "W" : "A", layers[items[best->down].layer].c_str(), items[best->down].wsize > 0 ? "W" : "A", cur_kl);
    }
    a.info["swaps"] = swaps;
    a.info["swaps_evaluated"] = evaluated;
    kl_mixed_scoring = cur_kl;
  }
  // kl: the mixed allocation is kept only if its KL is also lower than the uniform base width's on the next
  // calibration images, which chose nothing (with too few calibration images, on the scoring ones).
  bool uniform = false;
  if (kl) {
    std::vector<size_t> mixed, flat(items.size(), base);
    for (const auto& it : items) mixed.push_back(it.pick);
    at::Tensor check_imgs = held > 0 ? calib.narrow(0, sub, held) : score_imgs;
    at::Tensor check_ref = held > 0 ? log_probs(*ex, check_imgs) : score_ref;
    const double kl_mixed = model_kl(check_imgs, check_ref, mixed), kl_flat = model_kl(check_imgs, check_ref, flat);
    uniform = !(kl_mixed < kl_flat);
    a.info["check"] = {{"images", check_imgs.size(0)}, {"held_out", held > 0}, {"kl_mixed", kl_mixed},
                       {"kl_uniform", kl_flat}, {"kl_mixed_scoring", kl_mixed_scoring}, {"kept", uniform ? "uniform" : "mixed"}};
    if (o.progress)
      std::fprintf(stderr, "liu2021 bit allocation: KL of the mixed allocation on the scoring images %.4f; on %lld %s images: "
                   "mixed %.4f, uniform %d bits %.4f: %s kept\n", kl_mixed_scoring,
                   static_cast<long long>(check_imgs.size(0)), held > 0 ? "held-out" : "scoring", kl_mixed, choices[base], kl_flat,
                   uniform ? "uniform" : "mixed");
  }
  for (const auto& it : items)
    for (int k = 0; k < 2; ++k)
      if (it.slot[k]) a.bits[{layers[it.layer], k}] = choices[uniform ? base : it.pick];
  return a;
}

// A layer's searched steps: the min/max ranges of its two slots and the factors the search chose for them.
struct Searched {
  std::string name;
  Range range[2];
  double alpha[2];
};

// Bias correction: the layer's bias less the mean error per output channel (Linear's last axis, Conv2d's axis 1)
// of its output with the given slots quantized (a null point: that slot in FP), over all the calibration images.
at::Tensor corrected_bias(const Node& n, const std::vector<at::Tensor>& args, const at::Tensor& out, const QuantPoint* p0,
                          const QuantParams& q0, const QuantPoint* p1, const QuantParams& q1) {
  const at::Tensor err = quantized_output(n, args, p0, q0, p1, q1, out.size(0)) - out;
  const at::Tensor mean = n.op == OpKind::Linear ? err.flatten(0, -2).mean(0) : err.transpose(0, 1).flatten(1).mean(1);
  return (args[2] - mean).contiguous();
}

// The KL check (vitq's, on by default; off in liu2021+paper): the search's steps, checked by the model. The
// layer's similarity can prefer a clipped range that the model does not: at W8A8 on DeiT-Tiny, the post-LayerNorm
// inputs of qkv, whose outlier channels the Pearson correlation of the layer's output is content to clip, carry
// most of the published method's excess KL over min/max (this check's own record, settings.kl_check of
// bench/results/compare_deit_tiny_liu2021_klcheck.json: qkv inputs alone 0.0027 as searched, 0.00017 at min/max).
// For each kind of input (kind_name: the same input of the same layer in every block), the model's KL from FP32
// on all the calibration images is measured with that kind alone quantized (everything else FP, each layer's bias
// corrected for it), once with the searched steps and once with min/max's; the kind keeps min/max's where their
// KL is no larger. A kind of a few dozen layers measured on all the images is steady where one layer on a few
// images was noise (the +mpkl experience).
void check_against_minmax(const Graph& g, const LayerTensors& t, const at::Tensor& calib, const MethodOptions& o, QuantPlan& plan,
                          std::vector<Searched>& searched) {
  struct Slot {
    size_t layer;  // index in searched
    int slot;
  };
  std::map<std::string, std::vector<Slot>> kinds;
  for (size_t l = 0; l < searched.size(); ++l) {
    const Node& n = node_named(g, searched[l].name);
    for (int k = 0; k < 2; ++k) {
      const QuantPoint* p = plan.find(searched[l].name, k);
      if (!p) continue;
      const char* tag = p->weight ? "W" : n.op != OpKind::MatMul ? "A" : k == 0 ? "A0" : "A1";
      kinds[kind_name(g, n, tag)].push_back({l, k});
    }
  }
  Executor ex(g);
  const ExecHooks none;  // the reference run as the measured ones run (hooks: no Linear+GELU fusion), so that
                         // float differences between the two paths are not part of the KLs
  const at::Tensor ref = log_probs(ex, calib, &none);
  // the model's KL with the kind's slots quantized at factor alpha (searched: the search's), the rest FP
  auto kl_of = [&](const std::vector<Slot>& slots, bool minmax) {
    std::unordered_map<std::string, std::pair<std::optional<QuantParams>, std::optional<QuantParams>>> q;
    for (const auto& s : slots) {
      const Searched& l = searched[s.layer];
      const QuantPoint* p = plan.find(l.name, s.slot);
      auto& e = q[l.name];
      (s.slot == 0 ? e.first : e.second) = scaled(l.range[s.slot], p->spec, minmax ? 1.0 : l.alpha[s.slot]);
    }
    std::unordered_map<std::string, at::Tensor> bias;
    if (o.bias_correction)
      for (const auto& [name, e] : q) {
        const Node& n = node_named(g, name);
        const auto& args = t.inputs.at(name);
        if ((n.op == OpKind::Linear || n.op == OpKind::Conv2d) && args.size() > 2 && args[2].defined())
          bias[name] = corrected_bias(n, args, t.outputs.at(name), e.first ? plan.find(name, 0) : nullptr, e.first.value_or(QuantParams{}),
                                      e.second ? plan.find(name, 1) : nullptr, e.second.value_or(QuantParams{}));
      }
    ExecHooks hooks;
    hooks.transform_input = [&](const Node& node, size_t slot, const at::Tensor& x) {
      if (slot == 2) {
        auto b = bias.find(node.name);
        return b == bias.end() ? x : b->second;
      }
      auto it = q.find(node.name);
      if (it == q.end() || slot > 1) return x;
      const auto& params = slot == 0 ? it->second.first : it->second.second;
      return params ? fake_quant(x, plan.find(node.name, static_cast<int>(slot))->spec, *params) : x;
    };
    return mean_kl(ref, log_probs(ex, calib, &hooks));
  };
  nlohmann::json report = nlohmann::json::object();
  int reverted = 0;
  Progress bar("liu2021 check against min/max (model KL per kind of input)", kinds.size(), o.progress);
  size_t done = 0;
  for (const auto& [name, slots] : kinds) {
    const bool moved = std::any_of(slots.begin(), slots.end(), [&](const Slot& s) { return searched[s.layer].alpha[s.slot] != 1.0; });
    if (moved) {
      const double kl_searched = kl_of(slots, false), kl_minmax = kl_of(slots, true);
      const bool revert = kl_minmax <= kl_searched;
      report[name] = {{"kl_searched", kl_searched}, {"kl_minmax", kl_minmax}, {"kept", revert ? "minmax" : "searched"}};
      if (revert) {
        ++reverted;
        for (const auto& s : slots) {
          Searched& l = searched[s.layer];
          l.alpha[s.slot] = 1.0;
          QuantPoint* p = plan.find(l.name, s.slot);
          p->params = scaled(l.range[s.slot], p->spec, 1.0);
        }
      }
    }
    bar.update(++done, name);
  }
  bar.finish();
  if (o.progress)
    std::fprintf(stderr, "liu2021 check against min/max: %d of the %zu kinds of input checked keep min/max's steps (%zu kinds: %zu the search left at min/max)\n",
                 reverted, report.size(), kinds.size(), kinds.size() - report.size());
  // kinds: every kind the search moved from min/max (a kind it left there has nothing to check and is not listed)
  plan.settings["kl_check"] = {{"images", calib.size(0)}, {"kinds", report}, {"kinds_kept_at_minmax", reverted},
                               {"kinds_not_moved_by_the_search", kinds.size() - report.size()}};
}

QuantPlan run_liu2021(const Graph& g, const at::Tensor& calib, const MethodOptions& o) {
  at::InferenceMode guard;
  if (o.similarity != "pearson" && o.similarity != "cosine")
    fail("--similarity must be pearson or cosine, got '{}'", o.similarity);
  if (o.search_steps < 2) fail("search steps must be at least 2");
  const bool pearson = o.similarity == "pearson";
  LayerTensors storage;
  const LayerTensors& t = fp_layer_tensors(g, calib, o, storage);
  QuantPlan plan;
  PlacementOptions placement = o.placement;
  std::vector<std::string> layers;
  for (const auto& n : g.nodes)
    if (is_quantizable(g, n) && !placement.keep_fp.count(n.name)) layers.push_back(n.name);
  Allocation alloc;
  if (o.mixed_precision && !(placement.layer_bits.empty() && placement.layer_wbits.empty() && placement.layer_abits.empty()))
    fail("--layer-bits cannot be combined with mixed precision: the allocation chooses every layer's widths");
  if (o.mixed_precision) {
    alloc = allocate_bits(g, t, o, layers, calib);
    nlohmann::json bits = nlohmann::json::object();  // "W"/"A" widths per layer (a matmul: A for both inputs)
    for (const auto& [point, b] : alloc.bits) {
      const Node& n = node_named(g, point.first);
      bits[point.first][point.second == 1 && n.op != OpKind::MatMul ? "W" : "A"] = b;
    }
    plan.settings["mixed_precision"] = alloc.info;
    plan.settings["mixed_precision"]["avg_bits"] = o.avg_bits;
    plan.settings["mixed_precision"]["bits"] = bits;
  }
  plan.points = default_placement(g, placement);
  for (auto& p : plan.points) {
    auto it = alloc.bits.find({p.node, p.slot});
    if (it != alloc.bits.end()) p.spec.bits = it->second;
  }
  plan.settings["similarity"] = o.similarity;
  plan.settings["ranking"] = o.ranking;
  plan.settings["bias_correction"] = o.bias_correction;
  plan.settings["search"] = {{"alpha", {0.5, 1.2}}, {"steps", o.search_steps}, {"rounds", 1}, {"images", o.search_images}};

  std::mt19937_64 rng(o.seed);
  int64_t kept_minmax = 0;
  std::vector<Searched> searched;
  // The similarity is measured on the first `sub` images (activations are [B, ...]); with the held-out check the
  // next `held` images decide between the searched steps and min/max.
  const int64_t sub = std::min<int64_t>(calib.size(0), o.search_images);
  const int64_t held = o.holdout ? std::min<int64_t>(calib.size(0) - sub, o.search_images) : 0;
  Progress bar("liu2021 search", layers.size(), o.progress);
  size_t done = 0;
  for (const auto& name : layers) {
    const Node& n = node_named(g, name);
    const auto& args = t.inputs.at(name);
    const auto& out = t.outputs.at(name);
    QuantPoint* p0 = plan.find(name, 0);
    QuantPoint* p1 = plan.find(name, 1);
    Range r0 = range_of(args[0], p0->spec), r1 = range_of(args[1], p1->spec);
    double a0 = 1.0, a1 = 1.0;
    const bool rank = o.ranking && (n.roles & kAttnQK);
    RankPairs pairs;
    if (rank) {
      const int64_t keys = out.size(-1);
      std::vector<int64_t> i, j;
      for (int k = 0; k < 64; ++k) {
        i.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(keys)));
        j.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(keys)));
      }
      pairs = {at::tensor(i), at::tensor(j)};
    }
    const std::vector<at::Tensor> sargs = search::first_images(g, n, args, sub, calib.size(0));
    const at::Tensor sout = search::first_rows(out, sub, calib.size(0));
    auto score_of = [&](const std::vector<at::Tensor>& qargs) {
      auto q = run_node(n, qargs, sub)[0];
      double score = similarity(sout, q, pearson);
      if (rank) score -= o.ranking_weight * ranking_loss(sout, q, pairs);
      return score;
    };
    // one alternating round: the weight (second input) first, then the activation; the other slot is
    // quantized once per sweep
    for (int slot : {1, 0}) {
      const int other = 1 - slot;
      QuantPoint* ps = slot == 1 ? p1 : p0;
      QuantPoint* po = slot == 1 ? p0 : p1;
      const Range& rs = slot == 1 ? r1 : r0;
      const Range& ro = slot == 1 ? r0 : r1;
      std::vector<at::Tensor> qargs = sargs;
      qargs[static_cast<size_t>(other)] =
          fake_quant(sargs[static_cast<size_t>(other)], po->spec, scaled(ro, po->spec, slot == 1 ? a0 : a1));
      double best = -std::numeric_limits<double>::infinity(), best_alpha = 1.0;
      for (int k = 0; k < o.search_steps; ++k) {
        const double alpha = 0.5 + 0.7 * k / (o.search_steps - 1);
        qargs[static_cast<size_t>(slot)] = fake_quant(sargs[static_cast<size_t>(slot)], ps->spec, scaled(rs, ps->spec, alpha));
        const double s = score_of(qargs);
        if (s > best) {
          best = s;
          best_alpha = alpha;
        }
      }
      (slot == 1 ? a1 : a0) = best_alpha;
    }
    // Held out: the search scored its candidates on `sub` images only, and the similarity is blind to a scale
    // error, so a searched step may fit those images and hurt others. Keep it only where it also wins on the
    // next images of the calibration batch (never scored on): among min/max for both slots, either slot's
    // searched step alone, or both, the best there by the similarity among those whose output error there is
    // no larger than min/max's (the squared error sees the scale errors the similarity cannot; ties keep min/max).
    if (held > 0 && (a0 != 1.0 || a1 != 1.0)) {
      std::vector<at::Tensor> hargs = args;
      for (size_t s = 0; s < args.size(); ++s)
        if (args[s].defined() && !g.is_const(n.inputs[s])) hargs[s] = search::image_rows(args[s], sub, held, calib.size(0));
      const at::Tensor hout = search::image_rows(out, sub, held, calib.size(0));
      auto held_score = [&](double x0, double x1) {  // {similarity score, squared output error}
        std::vector<at::Tensor> q = hargs;
        q[0] = fake_quant(hargs[0], p0->spec, scaled(r0, p0->spec, x0));
        q[1] = fake_quant(hargs[1], p1->spec, scaled(r1, p1->spec, x1));
        auto o_q = run_node(n, q, held)[0];
        double score = similarity(hout, o_q, pearson);
        if (rank) score -= o.ranking_weight * ranking_loss(hout, o_q, pairs);
        return std::pair{score, (o_q - hout).pow(2).mean().item<double>()};
      };
      const auto [start_score, start_error] = held_score(1.0, 1.0);
      double best = start_score, b0 = 1.0, b1 = 1.0;
      for (auto [x0, x1] : {std::pair{a0, 1.0}, std::pair{1.0, a1}, std::pair{a0, a1}}) {
        if (x0 == 1.0 && x1 == 1.0) continue;
        if (const auto [s, e] = held_score(x0, x1); s > best && e <= start_error) {
          best = s;
          b0 = x0;
          b1 = x1;
        }
      }
      a0 = b0;
      a1 = b1;
      kept_minmax += (a0 == 1.0 && a1 == 1.0);
    }
    p0->params = scaled(r0, p0->spec, a0);
    p1->params = scaled(r1, p1->spec, a1);
    searched.push_back({name, {r0, r1}, {a0, a1}});
    bar.update(++done, name);
  }
  bar.finish();
  if (o.kl_check) check_against_minmax(g, t, calib, o, plan, searched);
  // bias correction, b ← b − E[Ŵ x̂ − W x] per output channel, with the steps as searched (and checked)
  for (const auto& l : searched) {
    const Node& n = node_named(g, l.name);
    const auto& args = t.inputs.at(l.name);
    if (!(o.bias_correction && (n.op == OpKind::Linear || n.op == OpKind::Conv2d) && args.size() > 2 && args[2].defined())) continue;
    const QuantPoint* p0 = plan.find(l.name, 0);
    const QuantPoint* p1 = plan.find(l.name, 1);
    plan.bias[l.name] = corrected_bias(n, args, t.outputs.at(l.name), p0, p0->params, p1, p1->params);
  }
  if (o.holdout) {
    plan.settings["search"]["holdout_images"] = held;
    plan.settings["search"]["layers_kept_at_minmax"] = kept_minmax;
  }
  return plan;
}

}  // namespace

MethodInfo method_liu2021() {
  return {"liu2021", "Liu et al., NeurIPS 2021",
          "similarity-aware step search (Pearson), ranking loss on attention, bias correction, mixed precision; vitq's KL check "
          "of the searched steps and kind-wise allocation (liu2021+paper: as published, nuclear-norm allocation)",
          run_liu2021};
}

}  // namespace vitq
