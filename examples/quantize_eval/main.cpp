// Quantizes a ViT to W8A8 with minmax on a few calibration images and evaluates it against FP32 — through the
// installed library only (no libtorch header here).
//   quantize_eval MODEL CALIB_DIR EVAL_DIR [IMAGES=32] [PLAN_OUT]
#include <vitq/vitq.h>

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL CALIB_DIR EVAL_DIR [IMAGES=32] [PLAN_OUT]\n", argv[0]);
    return 2;
  }
  try {
    const auto model = vitq::api::Model::load(argv[1]);
    const auto calib = vitq::api::ImageSet::open(argv[2]);
    const auto images = vitq::api::ImageSet::open(argv[3]);
    const size_t n = argc > 4 ? std::strtoul(argv[4], nullptr, 10) : 32;
    std::printf("vitq %s: %s, %lld classes, %.2f M parameters, %zu quantizable layers\n", vitq::api::version().c_str(),
                model.name().c_str(), static_cast<long long>(model.num_classes()), static_cast<double>(model.parameters()) / 1e6,
                model.quantizable_layers().size());
    vitq::api::QuantizeOptions q;
    q.method = "minmax";
    q.wbits = q.abits = 8;
    q.calib_size = 8;
    const vitq::api::Plan plan = vitq::api::quantize(model, calib, q);
    std::printf("plan: %s, %zu quantizers (%s)\n", plan.method().c_str(), plan.quantizers(), plan.summary().c_str());
    if (argc > 5) {
      plan.save(argv[5]);
      const auto reloaded = vitq::api::Plan::load(argv[5], model);
      std::printf("saved and reloaded %s: %zu quantizers\n", argv[5], reloaded.quantizers());
    }
    vitq::api::EvalOptions e;
    e.plan = &plan;
    e.limit = n;
    const vitq::api::EvalReport r = vitq::api::evaluate(model, images, e);
    std::printf("W8A8 on %zu images: top-1 %.2f%% (FP32 %.2f%%), agreement %.2f%%, KL %.4f\n", r.images, r.top1, r.fp32_top1,
                r.agreement, r.kl);
    return 0;
  } catch (const vitq::api::Error& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
    return 1;
  }
}
