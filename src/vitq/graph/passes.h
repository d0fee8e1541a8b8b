// Graph rewrites shared by the front ends. Each keeps the graph's function unchanged (tested by running the
// executor before and after) and leaves it topologically ordered.
#pragma once
#include "vitq/graph/graph.h"

namespace vitq {

// Folds shape arithmetic (Shape/Gather/Concat/... subgraphs, as torch.onnx emits for dynamic batch) into
// attributes, by running the graph at batch 1 and 2 on a zero image [B,3,height,width]: a value equal in
// both runs becomes a constant; a Reshape/Expand target that differs becomes a ShapeSpec whose entries scale
// with the batch. Afterwards no Shape/Cast/ConstantOfShape/Equal/Where node is left (else Error).
void fold_shape_subgraphs(Graph& g, int64_t height, int64_t width);
// Constant integer inputs (Reshape/Expand shape, Squeeze/Unsqueeze/ReduceMean axes, Split sizes, Slice
// bounds) become attributes.
void inputs_to_attrs(Graph& g);
// MatMul(x, W) [+ b] with constant W [in,out] (and constant b [out]) -> Linear(x, Wᵀ, b).
void fuse_linear(Graph& g);
// x * 0.5 * (1 + erf(x / √2)) in its decomposed forms -> Gelu(x).
void fuse_gelu(Graph& g);
// The decomposed LayerNorm (ReduceMean, Sub, Pow, ReduceMean, Add ε, Sqrt, Div, Mul γ, Add β) -> LayerNorm.
void fuse_layer_norm(Graph& g);
// BatchNorm after a Conv2d (constant weights, the conv's output read by the BatchNorm alone) is folded into the
// conv's weight and bias (computed in double precision); the conv is marked attr norm = "batchnorm" and keeps
// what the running statistics say of its new output, attrs bn_mean (β) and bn_std (|γ|·√(var / (var + ε))), per
// channel. Other BatchNorms stay as ops.
void fold_batch_norm(Graph& g);
// Drops Identity nodes, dead nodes and unreferenced values (renumbers value ids).
void compact(Graph& g);
// Tags roles (post-softmax, post-GELU, post-LayerNorm, residual stream, attention matmuls, the normalisation
// kind of every quantizable layer), gives the attention matmuls canonical names "<scope>.matmul_qk" /
// "<scope>.matmul_av", and finds the bridge blocks (Graph::bridges, layers tagged kBridge).
void annotate_roles(Graph& g);
// Ops that only move or reshape data (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Identity).
bool is_data_movement(OpKind op);

}  // namespace vitq
