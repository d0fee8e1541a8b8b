// Rewrites the ONNX front end adds to the shared passes (vitq/graph/passes.h) so that torch.onnx exports of the
// hybrid networks (MobileViT v1/v2, EfficientFormer, Swin) give the same IR as the safetensors builders. Each
// keeps the graph's function unchanged and leaves it topologically ordered.
#pragma once
#include "vitq/graph/graph.h"

namespace vitq {

// Before fold_shape_subgraphs: a Resize whose output size is computed from its input's shape
// (F.interpolate(size=...) exports Concat(Shape(x)[:2], [H, W])) gets attr sizes = [H, W], found by running the
// graph at batch 1 and 2, so that the folding does not stop on the batch entry. Runs nothing if none is left.
void resize_sizes_to_attrs(Graph& g, int64_t height, int64_t width);
// Constant inputs that inputs_to_attrs leaves: ReduceSum axes, Pad pads / constant value, Resize scales / sizes.
void onnx_inputs_to_attrs(Graph& g);
// x * Sigmoid(x) (the Sigmoid read by that Mul alone) -> SiLU(x).
void fuse_silu(Graph& g);
// torch's GroupNorm export: Reshape [B, G, -1], InstanceNorm (scale 1, bias 0), Reshape back, Mul γ, Add β ->
// GroupNorm(x, γ [C], β [C]) with num_groups G (γ/β ones/zeros when the Mul/Add are absent).
void fuse_group_norm(Graph& g);
// An Expand read by one elementwise Add/Sub/Mul/Div whose other operand already has the expanded shape (torch's
// expand_as before a product: MobileViT v2's context vector) is dropped: the op broadcasts by itself. Shapes are
// checked by running the graph at batch 1 and 2 on a zero image; runs nothing if there is no candidate.
void drop_broadcast_expand(Graph& g, int64_t height, int64_t width);
// Attention that scales q before q·kᵀ (timm's `q = q * scale; q @ k.transpose(-2, -1)`): MatMul(Mul(q, s), kᵀ)
// with a constant scalar s -> Mul(MatMul(q, kᵀ), s), the order the builders use (the scale before the softmax).
void scale_after_qk(Graph& g);
// Convolutions whose weight torch computed by folding a BatchNorm at export ("onnx::Conv_123") get attr
// norm = "batchnorm", as fold_batch_norm marks the ones it folds.
void mark_exported_batch_norm(Graph& g);

}  // namespace vitq
