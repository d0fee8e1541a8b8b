#include "vitq/report/html_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "vitq/util/error.h"

namespace vitq {

namespace {

using nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

std::string esc(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

// A number from JSON, NaN when absent or not a number (nlohmann writes inf as null: an exact layer).
double num(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : kNaN;
}
std::string str(const json& j, const char* key, const std::string& fallback = "") {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->is_string() ? it->get<std::string>() : it->dump();
}

// About `n` round tick values covering [lo, hi].
std::vector<double> ticks(double lo, double hi, int n = 5) {
  if (!(hi > lo)) hi = lo + 1;
  const double raw = (hi - lo) / n, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) t.push_back(std::abs(v) < step * 1e-9 ? 0 : v);
  return t;
}
std::string fmt_tick(double v) { return fmt::format("{:.4g}", v); }

// Plot area inside an SVG of width w, height h with margins; maps data to pixels.
struct Frame {
  double w, h, left, right, top, bottom, x0, x1, y0, y1;
  double px(double x) const { return left + (x - x0) / (x1 - x0) * (w - left - right); }
  double py(double y) const { return h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom); }
  double plot_w() const { return w - left - right; }
};

std::string svg_open(const std::string& id, double w, double h, const std::string& title) {
  return fmt::format("<svg class=\"chart\" id=\"{}\" width=\"{:.0f}\" height=\"{:.0f}\" viewBox=\"0 0 {:.0f} {:.0f}\" "
                     "role=\"img\" aria-label=\"{}\">\n",
                     id, w, h, w, h, esc(title));
}

std::string y_axis(const Frame& f, const std::vector<double>& yt, const std::string& label) {
  std::string s;
  for (double v : yt) {
    const double y = f.py(v);
    s += fmt::format("<line class=\"gridline\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\"/>"
                     "<text class=\"tick\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n",
                     f.left, f.w - f.right, y, y, f.left - 6, y + 4, fmt_tick(v));
  }
  s += fmt::format("<text class=\"axis-label\" transform=\"translate(14,{:.1f}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                   (f.top + f.h - f.bottom) / 2, esc(label));
  s += fmt::format("<line class=\"axis\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\"/>\n", f.left, f.w - f.right,
                   f.h - f.bottom, f.h - f.bottom);
  return s;
}

struct Series {
  std::string name;
  std::vector<double> values;  // per category; NaN = no cell
};

// Lines over categorical x (bit widths), one per method, with an optional dashed reference line.
std::string line_chart(const std::string& id, const std::string& title, const std::vector<std::string>& cats,
                       const std::vector<Series>& series, const std::string& ylabel, double ref, const std::string& ref_label) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& s : series)
    for (double v : s.values)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (std::isfinite(ref)) lo = std::min(lo, ref), hi = std::max(hi, ref);
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  lo = std::min(lo, 0.0);
  const auto yt = ticks(lo, hi);
  Frame f{560, 330, 56, 150, 34, 44, -0.5, static_cast<double>(cats.size()) - 0.5, yt.front(), std::max(yt.back(), hi)};
  std::string s = svg_open(id, f.w, f.h, title);
  s += fmt::format("<text class=\"title\" x=\"{:.1f}\" y=\"20\">{}</text>\n", f.left, esc(title));
  s += y_axis(f, yt, ylabel);
  for (size_t i = 0; i < cats.size(); ++i)
    s += fmt::format("<text class=\"tick\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", f.px(i), f.h - f.bottom + 18,
                     esc(cats[i]));
  if (std::isfinite(ref))
    s += fmt::format("<line class=\"ref\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\"><title>{}</title></line>"
                     "<text class=\"tick\" x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n",
                     f.left, f.w - f.right, f.py(ref), f.py(ref), esc(ref_label), f.left + 4, f.py(ref) - 4, esc(ref_label));
  for (size_t k = 0; k < series.size(); ++k) {
    const char* color = kPalette[k % std::size(kPalette)];
    std::string path;
    for (size_t i = 0; i < cats.size(); ++i) {
      const double v = series[k].values[i];
      if (!std::isfinite(v)) continue;
      path += fmt::format("{}{:.1f},{:.1f} ", path.empty() ? "M" : "L", f.px(i), f.py(v));
    }
    s += fmt::format("<g class=\"series\" data-series=\"{}\"><path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                     esc(series[k].name), path, color);
    for (size_t i = 0; i < cats.size(); ++i) {
      const double v = series[k].values[i];
      if (!std::isfinite(v)) continue;
      s += fmt::format("<circle class=\"point\" cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"{}\"><title>{} {}: {:.2f}</title></circle>\n",
                       f.px(i), f.py(v), color, esc(series[k].name), esc(cats[i]), v);
    }
    s += "</g>\n";
    const double ly = f.top + 8 + 18 * static_cast<double>(k);
    s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"14\" height=\"4\" fill=\"{}\"/><text class=\"legend\" x=\"{:.1f}\" "
                     "y=\"{:.1f}\">{}</text>\n",
                     f.w - f.right + 10, ly - 4, color, f.w - f.right + 30, ly + 1, esc(series[k].name));
  }
  return s + "</svg>\n";
}

// Per layer along the depth: isolated SQNR as bars, accumulated SQNR as a line; the worst layers marked.
std::string sqnr_chart(const json& layers, const std::set<std::string>& worst) {
  const size_t n = layers.size();
  std::vector<double> iso(n), acc(n);
  double hi = 0, lo = 0;
  for (size_t i = 0; i < n; ++i) {
    iso[i] = num(layers[i], "sqnr_isolated_db");
    acc[i] = num(layers[i], "sqnr_accumulated_db");
    for (double v : {iso[i], acc[i]})
      if (std::isfinite(v)) hi = std::max(hi, v), lo = std::min(lo, v);
  }
  const auto yt = ticks(lo, hi * 1.08 + 1);
  const double step = 13;
  Frame f{std::max(760.0, 70 + step * static_cast<double>(n) + 30), 470, 56, 30, 40, 190, -0.5, static_cast<double>(n) - 0.5,
          yt.front(), std::max(yt.back(), hi * 1.08 + 1)};
  std::string s = svg_open("chart-sqnr", f.w, f.h, "Per-layer SQNR");
  s += fmt::format("<text class=\"title\" x=\"{:.1f}\" y=\"20\">SQNR of each layer's output along the depth</text>\n", f.left);
  s += y_axis(f, yt, "SQNR (dB)");
  const double bw = f.plot_w() / static_cast<double>(std::max<size_t>(n, 1)) * 0.7;
  std::string path;
  for (size_t i = 0; i < n; ++i) {
    const std::string name = str(layers[i], "layer");
    const bool bad = worst.count(name) > 0;
    const double x = f.px(static_cast<double>(i));
    const bool exact = !std::isfinite(iso[i]);  // inf: the layer's output is unchanged
    const double v = exact ? f.y1 : iso[i];
    const double y = f.py(std::max(v, yt.front())), y0 = f.py(std::max(0.0, yt.front()));
    s += fmt::format("<rect class=\"bar{}\" data-layer=\"{}\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\">"
                     "<title>{} ({}, {}): alone {}, in context {}</title></rect>\n",
                     bad ? " worst" : "", esc(name), x - bw / 2, std::min(y, y0), bw, std::abs(y0 - y), esc(name),
                     esc(str(layers[i], "op")), esc(str(layers[i], "bits")),
                     exact ? std::string("exact") : fmt::format("{:.2f} dB", iso[i]),
                     std::isfinite(acc[i]) ? fmt::format("{:.2f} dB", acc[i]) : std::string("exact"));
    if (std::isfinite(acc[i])) path += fmt::format("{}{:.1f},{:.1f} ", path.empty() ? "M" : "L", x, f.py(acc[i]));
    s += fmt::format("<text class=\"layer-name{}\" transform=\"translate({:.1f},{:.1f}) rotate(-65)\" text-anchor=\"end\">{}</text>\n",
                     bad ? " worst" : "", x + 3, f.h - f.bottom + 8, esc(name));
    if (bad)
      s += fmt::format("<path class=\"marker\" d=\"M{:.1f},{:.1f} l-5,-8 l10,0 z\"><title>worst: {}</title></path>\n", x,
                       std::min(y, y0) - 3, esc(name));
  }
  s += fmt::format("<path class=\"accumulated\" d=\"{}\" fill=\"none\"/>\n", path);
  s += fmt::format("<rect x=\"{:.1f}\" y=\"28\" width=\"10\" height=\"10\" class=\"bar\"/><text class=\"legend\" x=\"{:.1f}\" y=\"37\">layer alone on FP input</text>"
                   "<line class=\"accumulated\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"33\" y2=\"33\"/><text class=\"legend\" x=\"{:.1f}\" y=\"37\">whole plan</text>"
                   "<path class=\"marker\" d=\"M{:.1f},38 l-5,-8 l10,0 z\"/><text class=\"legend\" x=\"{:.1f}\" y=\"37\">worst (lowest alone)</text>\n",
                   f.w - 470, f.w - 456, f.w - 310, f.w - 292, f.w - 286, f.w - 170, f.w - 160);
  return s + "</svg>\n";
}

// Weight and activation bits of every quantized layer (mixed precision shows as steps).
std::string bits_chart(const json& layers) {
  const size_t n = layers.size();
  const double step = 13;
  Frame f{std::max(760.0, 70 + step * static_cast<double>(n) + 30), 380, 56, 30, 40, 190, -0.5, static_cast<double>(n) - 0.5, 0, 8};
  std::string s = svg_open("chart-bits", f.w, f.h, "Bits per layer");
  s += fmt::format("<text class=\"title\" x=\"{:.1f}\" y=\"20\">Bits per layer (W: weights, A: lowest activation input)</text>\n", f.left);
  s += y_axis(f, {0, 2, 4, 6, 8}, "bits");
  const double bw = f.plot_w() / static_cast<double>(std::max<size_t>(n, 1)) * 0.38;
  for (size_t i = 0; i < n; ++i) {
    const std::string name = str(layers[i], "layer");
    const double x = f.px(static_cast<double>(i));
    const double wb = num(layers[i], "wbits"), ab = num(layers[i], "abits");
    if (std::isfinite(wb))
      s += fmt::format("<rect class=\"wbits\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\"><title>{}: W{}</title></rect>\n",
                       x - bw, f.py(wb), bw, f.py(0) - f.py(wb), esc(name), wb);
    if (std::isfinite(ab))
      s += fmt::format("<rect class=\"abits\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\"><title>{}: A{}</title></rect>\n",
                       x, f.py(ab), bw, f.py(0) - f.py(ab), esc(name), ab);
    s += fmt::format("<text class=\"layer-name\" transform=\"translate({:.1f},{:.1f}) rotate(-65)\" text-anchor=\"end\">{}</text>\n", x + 3,
                     f.h - f.bottom + 8, esc(name));
  }
  s += fmt::format("<rect x=\"{:.1f}\" y=\"28\" width=\"10\" height=\"10\" class=\"wbits\"/><text class=\"legend\" x=\"{:.1f}\" y=\"37\">weights</text>"
                   "<rect x=\"{:.1f}\" y=\"28\" width=\"10\" height=\"10\" class=\"abits\"/><text class=\"legend\" x=\"{:.1f}\" y=\"37\">activations</text>\n",
                   f.w - 200, f.w - 186, f.w - 120, f.w - 106);
  return s + "</svg>\n";
}

// One activation's FP histogram (log counts) with the quantizer's range shaded and its grid as a rug below.
std::string histogram_chart(const json& h, size_t k) {
  const auto counts = h.at("counts").get<std::vector<int64_t>>();
  const double lo = num(h, "lo"), hi = num(h, "hi"), rlo = num(h, "range_lo"), rhi = num(h, "range_hi");
  const auto grid = h.value("grid", std::vector<double>{});
  double x0 = std::min(lo, rlo), x1 = std::max(hi, rhi);
  if (!(x1 > x0)) x0 -= 0.5, x1 += 0.5;
  const double pad = (x1 - x0) * 0.03;
  int64_t cmax = 1;
  for (auto c : counts) cmax = std::max(cmax, c);
  const double ymax = std::log10(1.0 + static_cast<double>(cmax));
  Frame f{560, 300, 56, 20, 40, 66, x0 - pad, x1 + pad, 0, std::max(ymax * 1.05, 0.5)};
  const std::string layer = str(h, "layer");
  const int slot = h.value("slot", 0);
  const std::string title = fmt::format("{} input {} ({})", layer, slot, str(h, "label"));
  std::string s = svg_open(fmt::format("chart-hist-{}", k), f.w, f.h, "Activation histogram of " + title);
  s += fmt::format("<text class=\"title\" x=\"{:.1f}\" y=\"18\">{}</text>\n", f.left, esc(title));
  const double values = num(h, "values"), outside = num(h, "outside");
  s += fmt::format("<text class=\"subtitle\" x=\"{:.1f}\" y=\"33\">{} · range [{:.4g}, {:.4g}]{} · {:.3f}% of values clipped</text>\n",
                   f.left, esc(str(h, "granularity")), rlo, rhi,
                   grid.empty() ? std::string(" (union; one grid each, not drawn)") : fmt::format(" · {} levels", grid.size()),
                   values > 0 ? 100.0 * outside / values : 0.0);
  // the representable range
  s += fmt::format("<rect class=\"range\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\"><title>quantization range [{:.4g}, {:.4g}]</title></rect>\n",
                   f.px(rlo), f.top, std::max(1.0, f.px(rhi) - f.px(rlo)), f.h - f.bottom - f.top, rlo, rhi);
  std::vector<double> yt;
  for (double v = 0; v <= f.y1 + 1e-9; v += 1) yt.push_back(v);
  std::string axis;
  for (double v : yt)
    axis += fmt::format("<line class=\"gridline\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\"/><text class=\"tick\" x=\"{:.1f}\" "
                        "y=\"{:.1f}\" text-anchor=\"end\">1e{:.0f}</text>\n",
                        f.left, f.w - f.right, f.py(v), f.py(v), f.left - 6, f.py(v) + 4, v);
  s += axis + fmt::format("<text class=\"axis-label\" transform=\"translate(14,{:.1f}) rotate(-90)\" text-anchor=\"middle\">count + 1 (log)</text>\n",
                          (f.top + f.h - f.bottom) / 2);
  const double bin = (hi > lo ? hi - lo : 1.0) / static_cast<double>(std::max<size_t>(counts.size(), 1));
  const double blo = hi > lo ? lo : lo - 0.5;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    const double a = blo + bin * static_cast<double>(i), y = f.py(std::log10(1.0 + static_cast<double>(counts[i])));
    s += fmt::format("<rect class=\"hbar\" x=\"{:.2f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"{:.1f}\"><title>[{:.4g}, {:.4g}): {}</title></rect>\n",
                     f.px(a), y, std::max(0.6, f.px(a + bin) - f.px(a)), f.py(0) - y, a, a + bin, counts[i]);
  }
  // the grid: one tick per level, in a strip under the axis
  const double ry = f.h - f.bottom + 4;
  std::string rug;
  for (double g : grid) rug += fmt::format("M{:.2f},{:.1f}v10", f.px(g), ry);
  if (!rug.empty()) s += fmt::format("<path class=\"grid-level\" d=\"{}\"><title>{} quantization levels</title></path>\n", rug, grid.size());
  for (double v : ticks(f.x0, f.x1, 6))
    if (v >= f.x0 && v <= f.x1)
      s += fmt::format("<text class=\"tick\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", f.px(v), f.h - f.bottom + 30, fmt_tick(v));
  s += fmt::format("<text class=\"legend\" x=\"{:.1f}\" y=\"{:.1f}\">shaded: quantization range; ticks under the axis: grid levels</text>\n",
                   f.left, f.h - 8);
  return s + "</svg>\n";
}

std::string table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows, const std::string& cls) {
  std::string s = fmt::format("<table class=\"{}\"><thead><tr>", cls);
  for (const auto& h : head) s += "<th>" + esc(h) + "</th>";
  s += "</tr></thead><tbody>\n";
  for (const auto& r : rows) {
    s += "<tr>";
    for (const auto& c : r) s += "<td>" + esc(c) + "</td>";
    s += "</tr>\n";
  }
  return s + "</tbody></table>\n";
}

std::string compare_section(const json& c, const std::string& file) {
  // bit widths ordered by total bits, then weight bits; methods in order of first appearance
  std::vector<std::pair<int, int>> bits;
  std::vector<std::string> methods;
  for (const auto& r : c["rows"]) {
    const std::pair<int, int> b{r["wbits"].get<int>(), r["abits"].get<int>()};
    if (std::find(bits.begin(), bits.end(), b) == bits.end()) bits.push_back(b);
    const std::string m = r["method"].get<std::string>();
    if (std::find(methods.begin(), methods.end(), m) == methods.end()) methods.push_back(m);
  }
  std::sort(bits.begin(), bits.end(), [](auto a, auto b) { return std::pair{a.first + a.second, a.first} < std::pair{b.first + b.second, b.first}; });
  std::vector<std::string> cats;
  for (auto [w, a] : bits) cats.push_back(fmt::format("W{}A{}", w, a));
  std::vector<Series> top1, agree;
  for (const auto& m : methods) {
    Series t{m, std::vector<double>(bits.size(), kNaN)}, g{m, std::vector<double>(bits.size(), kNaN)};
    for (const auto& r : c["rows"]) {
      if (r["method"] != m) continue;
      const auto it = std::find(bits.begin(), bits.end(), std::pair{r["wbits"].get<int>(), r["abits"].get<int>()});
      const size_t i = static_cast<size_t>(it - bits.begin());
      t.values[i] = num(r, "top1");
      g.values[i] = num(r, "agreement");
    }
    top1.push_back(t);
    agree.push_back(g);
  }
  const double fp = num(c, "fp32_top1");
  std::string s = "<section id=\"compare\"><h2>Accuracy against bits</h2>\n";
  s += fmt::format("<p>{} cells of <code>{}</code>: {} · {} evaluation images · FP32 top-1 {:.2f}%.</p>\n", c["rows"].size(),
                   esc(file.empty() ? std::string("the compare run") : file), esc(str(c, "model")), str(c, "images", "?"), fp);
  s += "<div class=\"row\">" + line_chart("chart-top1", "Top-1 accuracy (%)", cats, top1, "top-1 (%)", fp, "FP32") +
       line_chart("chart-agreement", "Top-1 agreement with FP32 (%)", cats, agree, "agreement (%)", kNaN, "") + "</div>\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : c["rows"])
    rows.push_back({str(r, "method"), fmt::format("W{}A{}", r["wbits"].get<int>(), r["abits"].get<int>()), fmt::format("{:.2f}", num(r, "top1")),
                    fmt::format("{:+.2f}", num(r, "top1") - fp), fmt::format("{:.2f}", num(r, "agreement")),
                    std::isfinite(num(r, "kl")) ? fmt::format("{:.4f}", num(r, "kl")) : "", std::isfinite(num(r, "search_seconds")) ? fmt::format("{:.1f}", num(r, "search_seconds")) : "",
                    str(r, "quantizers")});
  s += "<p class=\"note\">Click a column header to sort.</p>\n" +
       table({"method", "bits", "top-1 %", "Δ vs FP32", "agreement %", "KL(FP‖Q)", "search s", "quantizers"}, rows, "sortable");
  return s + "</section>\n";
}

std::string plan_section(const json& p) {
  const json& layers = p.at("layers");
  std::set<std::string> worst;
  for (const auto& w : p.value("worst", json::array())) worst.insert(w.get<std::string>());
  std::string s = "<section id=\"layers\"><h2>Per-layer error</h2>\n";
  s += fmt::format("<p>Plan <code>{}</code> ({}, W{}A{}) on the first {} images of <code>{}</code>. "
                   "Alone: only this layer quantized, fed its FP input (what the layer itself costs); in context: the whole "
                   "plan applied (errors of earlier layers included). Marked: the {} layers with the lowest SQNR alone.</p>\n",
                   esc(str(p, "file")), esc(str(p, "method")), str(p.value("settings", json::object()), "wbits", "?"),
                   str(p.value("settings", json::object()), "abits", "?"), str(p, "images", "?"), esc(str(p, "data")), worst.size());
  s += "<div class=\"scroll\">" + sqnr_chart(layers, worst) + "</div>\n";
  if (p.contains("histograms") && !p["histograms"].empty()) {
    s += "<h2>Activations of the worst layers</h2>\n<p>The FP distribution each quantizer sees (count per bin, log scale), "
         "the range it represents (shaded) and every value it can produce (ticks under the axis: twin and log2 grids "
         "are drawn as they are).</p>\n<div class=\"grid2\">";
    size_t k = 0;
    for (const auto& h : p["histograms"]) s += histogram_chart(h, k++);
    s += "</div>\n";
  }
  s += "<h2>Bit assignment</h2>\n<div class=\"scroll\">" + bits_chart(layers) + "</div>\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& l : layers) {
    auto db = [&](const char* key) { return std::isfinite(num(l, key)) ? fmt::format("{:.2f}", num(l, key)) : std::string("exact"); };
    rows.push_back({str(l, "layer"), str(l, "op"), str(l, "bits"), db("sqnr_isolated_db"), db("sqnr_accumulated_db"),
                    fmt::format("{:.5f}", num(l, "cosine_isolated")), fmt::format("{:.5f}", num(l, "cosine_accumulated"))});
  }
  s += "<details><summary>Per-layer table</summary>\n" +
       table({"layer", "op", "quantizers", "SQNR alone dB", "SQNR in context dB", "cosine alone", "cosine in context"}, rows, "sortable") +
       "</details>\n";
  return s + "</section>\n";
}

constexpr const char* kStyle = R"(
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px;font-size:12px;word-break:break-all}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f6f6f6;cursor:pointer;user-select:none}th.sorted-asc:after{content:" ▲"}th.sorted-desc:after{content:" ▼"}
.row,.grid2{display:flex;flex-wrap:wrap;gap:16px}.scroll{overflow-x:auto}.note{color:#666;font-size:12px;margin:2px 0}
svg.chart{background:#fff;border:1px solid #e4e4e4;border-radius:4px}
svg .title{font-size:13px;font-weight:600}svg .subtitle{font-size:11px;fill:#555}svg .tick,svg .legend{font-size:11px;fill:#444}
svg .axis-label{font-size:11px;fill:#444}svg .gridline{stroke:#eee}svg .axis{stroke:#999}
svg .ref{stroke:#555;stroke-dasharray:5 4}svg .bar{fill:#8fb3d9}svg .bar.worst{fill:#d62728}
svg .accumulated{stroke:#ff7f0e;stroke-width:1.5}svg .marker{fill:#d62728}
svg .layer-name{font-size:9px;fill:#555}svg .layer-name.worst{fill:#d62728;font-weight:700}
svg .wbits{fill:#4c78a8}svg .abits{fill:#f58518}svg .range{fill:#2ca02c;fill-opacity:.12;stroke:#2ca02c;stroke-opacity:.5}
svg .hbar{fill:#4c78a8}svg .grid-level{stroke:#2ca02c;stroke-width:.6}svg .point:hover{r:6}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:12.5px}dl.meta dt{color:#666}dl.meta dd{margin:0}
)";

// Sortable tables, and the rendered size of every chart in <body data-charts> (read by the browser test).
constexpr const char* kScript = R"(
(function () {
  for (const table of document.querySelectorAll('table.sortable')) {
    const heads = Array.from(table.tHead.rows[0].cells);
    heads.forEach(function (th, col) {
      th.addEventListener('click', function () {
        const asc = !th.classList.contains('sorted-asc');
        heads.forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
        th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        const key = function (r) { const t = r.cells[col].textContent; const v = parseFloat(t); return isNaN(v) ? t : v; };
        rows.sort(function (a, b) {
          const x = key(a), y = key(b);
          const c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  const sizes = [];
  for (const svg of document.querySelectorAll('svg.chart')) {
    const box = svg.getBBox();
    sizes.push(svg.id + ':' + Math.round(box.width) + 'x' + Math.round(box.height) + ':' + svg.querySelectorAll('rect,circle,path').length);
  }
  document.body.dataset.charts = sizes.join(' ');
})();
)";

}  // namespace

void check_compare_result(const json& j, const std::string& where) {
  if (!j.is_object() || !j.contains("rows") || !j["rows"].is_array())
    fail("{}: not a compare result (no \"rows\"; written by vitq compare --out)", where);
  if (j.contains("shard"))
    fail("{}: a partial result of one shard; merge the shards first (vitq compare --merge PARTS --out PREFIX)", where);
  if (!j.contains("fp32_top1") || !j["fp32_top1"].is_number() || !j.contains("model") || !j["model"].is_string())
    fail("{}: not a compare result (no model or FP32 top-1)", where);
  if (j["rows"].empty()) fail("{}: the compare result has no rows", where);
  size_t i = 0;
  for (const auto& r : j["rows"]) {
    const bool ok = r.is_object() && r.contains("method") && r["method"].is_string() && r.contains("wbits") &&
                    r["wbits"].is_number_integer() && r.contains("abits") && r["abits"].is_number_integer() && r.contains("top1") &&
                    r["top1"].is_number() && r.contains("agreement") && r["agreement"].is_number();
    if (!ok) fail("{}: row {} of the compare result lacks its method, bits, top-1 or agreement", where, i);
    ++i;
  }
}

std::string render_report_html(const json& data) {
  const bool has_compare = data.contains("compare"), has_plan = data.contains("plan");
  if (!has_compare && !has_plan) fail("report: nothing to show (give a compare result and/or a plan)");
  if (has_compare) check_compare_result(data["compare"], str(data, "compare_file", "compare result"));
  std::string model = has_plan ? str(data["plan"], "model") : str(data["compare"], "model");
  std::string s = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width\">\n";
  s += fmt::format("<title>vitq report: {}</title>\n<style>{}</style></head>\n<body>\n", esc(model), kStyle);
  s += fmt::format("<h1>vitq report: {}</h1>\n", esc(model));
  if (has_compare) s += compare_section(data["compare"], str(data, "compare_file"));
  if (has_plan) s += plan_section(data["plan"]);
  // metadata
  std::vector<std::pair<std::string, std::string>> meta;
  if (has_compare) {
    const json& c = data["compare"];
    for (const auto& [key, label] : std::vector<std::pair<const char*, const char*>>{
             {"model", "model"}, {"source", "weights"}, {"data", "evaluation images"}, {"images", "images evaluated"}, {"calib", "calibration images"},
             {"calib_size", "calibration size"}, {"seed", "seed"}, {"convention", "convention"}, {"weight_granularity", "weights"},
             {"threads", "threads"}, {"command_line", "command"}})
      if (c.contains(key)) meta.emplace_back(std::string("compare: ") + label, str(c, key));
  }
  if (has_plan) {
    const json& p = data["plan"];
    meta.emplace_back("plan", str(p, "file"));
    meta.emplace_back("plan: model", str(p, "model"));
    meta.emplace_back("plan: method", str(p, "method"));
    meta.emplace_back("plan: settings", p.value("settings", json::object()).dump());
    meta.emplace_back("per-layer data: images", fmt::format("first {} of {}", str(p, "images"), str(p, "data")));
  }
  const json versions = data.value("versions", json::object());
  for (const auto& [k, v] : versions.items()) meta.emplace_back("version: " + k, v.is_string() ? v.get<std::string>() : v.dump());
  if (data.contains("generated")) meta.emplace_back("generated", str(data, "generated"));
  s += "<section id=\"metadata\"><h2>Run</h2>\n<dl class=\"meta\">\n";
  for (const auto& [k, v] : meta) s += fmt::format("<dt>{}</dt><dd>{}</dd>\n", esc(k), esc(v));
  s += "</dl></section>\n";
  // the data behind the charts, for whoever wants numbers rather than pixels; '<' only occurs inside JSON
  // strings, written as \u003c so that nothing in them can end or alter the script element
  std::string raw;
  for (char ch : data.dump()) raw += ch == '<' ? std::string("\\u003c") : std::string(1, ch);
  s += "<script type=\"application/json\" id=\"vitq-data\">" + raw + "</script>\n";
  s += fmt::format("<script>{}</script>\n</body></html>\n", kScript);
  return s;
}

}  // namespace vitq
