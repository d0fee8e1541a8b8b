// vitq report: one self-contained HTML page from a compare result and/or a plan (per-layer SQNR, activation
// histograms of the worst layers with their quantizers, bits per layer, accuracy against bits per method).
#include <ATen/ATen.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "vitq/data/dataset.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/quant/plan.h"
#include "vitq/report/histograms.h"
#include "vitq/report/html_report.h"
#include "vitq/util/error.h"
#include "vitq/util/file_io.h"

namespace vitq::cli {

nlohmann::json read_compare_result(const std::string& path) {
  nlohmann::json j = parse_compare_json(path);
  check_compare_result(j, path);
  return j;
}

nlohmann::json plan_report_data(const Graph& g, const QuantPlan& plan, const std::string& plan_file, const std::string& data_dir,
                                size_t images, int worst, bool progress) {
  Dataset head = open_dataset(data_dir);
  head.samples.resize(std::min(head.samples.size(), images));
  at::Tensor x = load_calibration(g, head, head.samples.size(), 0, false);
  if (progress) fmt::print(stderr, "report: per-layer SQNR of {} on {} images\n", plan_file, x.size(0));
  const auto rep = layer_report(g, plan, x);
  nlohmann::json layers = report_json(rep);
  for (size_t i = 0; i < rep.size(); ++i) {
    int wb = 0, ab = 0;
    for (const auto& p : plan.points) {
      if (p.node != rep[i].node) continue;
      if (p.weight) wb = std::max(wb, p.spec.bits);
      else ab = ab == 0 ? p.spec.bits : std::min(ab, p.spec.bits);
    }
    layers[i]["wbits"] = wb ? nlohmann::json(wb) : nlohmann::json();
    layers[i]["abits"] = ab ? nlohmann::json(ab) : nlohmann::json();
  }
  // the worst: lowest SQNR alone (an exact layer, SQNR inf, is never among them)
  std::vector<size_t> order;
  for (size_t i = 0; i < rep.size(); ++i)
    if (std::isfinite(rep[i].sqnr_isolated)) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rep[a].sqnr_isolated < rep[b].sqnr_isolated; });
  order.resize(std::min(order.size(), static_cast<size_t>(worst)));
  std::vector<std::string> worst_layers;
  for (size_t i : order) worst_layers.push_back(rep[i].node);
  if (progress) fmt::print(stderr, "report: activation histograms of the {} worst layers\n", worst_layers.size());
  nlohmann::json hists = nlohmann::json::array();
  for (const auto& h : activation_histograms(g, plan, x, worst_layers))
    hists.push_back({{"layer", h.node}, {"slot", h.slot}, {"label", h.label}, {"granularity", h.granularity}, {"lo", h.lo},
                     {"hi", h.hi}, {"counts", h.counts}, {"range_lo", h.range_lo}, {"range_hi", h.range_hi}, {"grid", h.grid},
                     {"values", h.values}, {"outside", h.outside}});
  return {{"file", plan_file}, {"model", plan.model}, {"method", plan.method}, {"settings", plan.settings}, {"data", data_dir},
          {"images", x.size(0)}, {"layers", layers}, {"worst", worst_layers}, {"histograms", hists}};
}

void write_report(const std::string& out, nlohmann::json data) {
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char stamp[32];
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S UTC", &tm);
  data["generated"] = stamp;
  data["versions"] = {{"vitq", "0.1.0"}, {"libtorch", TORCH_VERSION}};
  write_file_atomic(out, render_report_html(data), true);
}

int run_report(const ReportArgs& a) {
  if (a.out.empty()) fail("report needs --out FILE.html");
  if (a.compare.empty() && a.plan.empty()) fail("report needs --compare RESULT.json and/or MODEL --plan PLAN.json --data DIR");
  if (!a.plan.empty() && (a.model.empty() || a.data.empty()))
    fail("report --plan needs the MODEL it quantizes and --data (images for the per-layer SQNR and histograms)");
  if (a.plan.empty() && !a.model.empty()) fail("report: a MODEL without --plan draws nothing (give --plan, or only --compare)");
  {  // the output is checked before any work
    std::vector<std::string> inputs = model_files(a.model);
    for (const auto& f : data_files(a.data)) inputs.push_back(f);
    for (const auto& f : {a.compare, a.plan})
      if (!f.empty()) inputs.push_back(f);
    check_output_path(a.out, inputs, "--out");
  }
  nlohmann::json data = nlohmann::json::object();
  if (!a.compare.empty()) {
    data["compare"] = read_compare_result(a.compare);
    data["compare_file"] = a.compare;
  }
  if (!a.plan.empty()) {
    set_threads(a.threads);
    Graph g = load_model(a.model);
    QuantPlan plan = load_plan(a.plan, g);
    data["plan"] = plan_report_data(g, plan, a.plan, a.data, a.images, a.worst, !a.quiet);
  }
  write_report(a.out, data);
  fmt::print("wrote {}\n", a.out);
  return 0;
}

}  // namespace vitq::cli
