// `vitq report`: one self-contained HTML file (inline SVG charts, a few lines of inline script, no network) from
// a compare result and/or a plan's per-layer data. Independent of libtorch: it renders JSON.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace vitq {

// Checks that `j` is a compare result (vitq compare's JSON, one run or merged shards); Error naming `where`
// and the problem otherwise (a plan, a partial shard result, rows without their numbers, ...).
void check_compare_result(const nlohmann::json& j, const std::string& where);

// The page. `data` holds any of:
//   "compare": a compare result (checked with check_compare_result), "compare_file": its path;
//   "plan": {"file", "model", "method", "settings", "data", "images", "layers": [{"layer", "op", "bits",
//            "sqnr_isolated_db", "sqnr_accumulated_db", "cosine_isolated", "cosine_accumulated", "wbits", "abits"}],
//            "worst": [layer names], "histograms": [ActivationHistogram as JSON]};
//   "versions": {name: version}, "generated": a UTC time stamp.
// Charts are <svg class="chart" id="chart-..."> elements: chart-top1 and chart-agreement (compare), chart-sqnr,
// chart-bits and chart-hist-K (plan). The page's script records each chart's rendered size in
// <body data-charts="id:WxH ...">, which the browser test reads.
std::string render_report_html(const nlohmann::json& data);

}  // namespace vitq
