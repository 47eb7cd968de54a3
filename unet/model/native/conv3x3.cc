// 3x3 convolutions (padding 1, stride 1, with bias) on oneDNN's Winograd kernels.
//
// Loaded by unet/native through MXNet's custom-operator library API (mx.library.load). Both
// operators compute what mxnet.gluon.nn.Conv2D(kernel_size=3, padding=1) computes, for data
// (N, C, H, W), weight (K, C, 3, 3) and bias (K,), into (N, K, H, W):
//   unet_conv3x3(data, weight, bias)        inference: forward only (no gradient), with the
//                                           weights kept in Winograd's transformed layout;
//   unet_conv3x3_train(data, weight, bias)  training: forward and backward (data, weight and
//                                           bias gradients, always written, never added).
// MXNet 1.9.1 asks its bundled oneDNN for the direct algorithm only; this file links oneDNN 2.6
// from the onednn-cpu-gomp wheel and asks for F(4x4, 3x3) Winograd, which does 2.25-4x fewer
// multiplications: the U-Net's layers run 2.3-4.8x faster forward and 2-3x faster backward on an
// AVX-512 CPU, in float32 (results differ from the direct algorithm's by rounding, ~1e-5
// relative). Where oneDNN has no Winograd kernel for a shape or a CPU, it takes its own choice.
//
// MXNet re-creates an operator's state on most calls, so what is worth keeping lives here,
// process-wide, under one lock (calls run one at a time): the primitives of each shape; buffers
// for the convolution's own memory layouts and for the primitives' scratchpads, shared by all
// shapes (grown to the largest); and for inference the transformed weights (a transform of a
// 1024x1024 layer takes ~170 ms, its convolution ~25 ms), found by a 128-bit hash of all the
// weights' bytes, computed on every call (~1.5% of a pass; weights_hash.h). Neither the
// weights' address nor MXNet's version counter identifies them: MXNet may pass a new copy on
// every call, and a freed array's address comes back with other weights at the same version.
// The hash is not cryptographic: weights crafted to collide with others of the same shape in the
// same process could run with the other's transform; for any other change, a collision (two
// 64-bit halves at once) is far less likely than a memory error.
//
// Both run Winograd only where it pays (use_winograd): not on a layer with fewer than 16 input
// channels (they are padded to 16; the direct kernel is faster there) nor on small images, where
// the 4x larger transformed weights take longer to stream from memory than the multiplications
// they save; those layers run oneDNN's direct convolution (at inference its GEMM kernel on the
// plain tensors, with no copy of the weights at all). Training also computes the weight gradient
// of layers up to 32x32 with the direct algorithm (kWeightGradientBoundPixels).
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"
#include "operator.h"
#include "onednn_conv.h"
#include "weights_hash.h"
#include "oneapi/dnnl/dnnl.hpp"

using namespace mxnet::ext;
using namespace unet_native::onednn;

namespace {

// ---------------------------------------------------------------------------------- inference

// Up to this many output pixels per channel (N*H*W), Winograd is bound by reading its
// transformed weights (36 values for 9, once per call) and saves little or nothing: on a
// 1024->1024 layer (AVX-512, 2 cores) it takes as long as the direct algorithm at 16x16, half
// as long at 32x32. The default model's two deepest layers at a 256x256 tile hold 226 MB of
// transformed weights.
constexpr int64_t kWeightBoundPixels = 256;
constexpr int64_t kWinogradMinChannels = 16;

// Winograd, or the direct algorithm (at inference on the plain tensors: GEMM convolutions).
bool use_winograd(const dims& src_dims) {
  return src_dims[1] >= kWinogradMinChannels && output_pixels(src_dims) > kWeightBoundPixels;
}

struct InferencePlan {
  Shapes shapes;
  dnnl::convolution_forward conv;
  dnnl::memory::desc src_md, weights_md, dst_md, scratchpad_md;
  InferencePlan(const dims& src_dims, int64_t out_channels) : shapes(src_dims, out_channels) {
    dnnl::algorithm algorithm;
    auto pd = use_winograd(src_dims)
        ? forward_pd(shapes, dnnl::prop_kind::forward_inference, &algorithm)
        : direct_forward_pd(shapes, dnnl::prop_kind::forward_inference, /*plain=*/true);
    conv = dnnl::convolution_forward(pd);
    src_md = pd.src_desc();
    weights_md = pd.weights_desc();
    dst_md = pd.dst_desc();
    scratchpad_md = pd.scratchpad_desc();
  }
  // The direct algorithm takes the weights as they are: nothing to transform or keep.
  bool plain_weights() const { return weights_md == shapes.weights; }
};

// Weights in the convolution's layout.
struct Packed {
  dnnl::memory::desc md;
  dnnl::memory memory;
  uint64_t last_used = 0;
  size_t bytes() const { return md.get_size(); }
};

// At most this many bytes of transformed weights: the least recently used go first. The default
// model needs about 0.35 GB at 256x256, 0.55 GB at 512x512 (every layer on Winograd).
constexpr size_t kPackedBudget = size_t(2) << 30;

std::map<std::vector<int64_t>, std::unique_ptr<InferencePlan>> inference_plans;  // N C H W K thr
// Key: K C 3 3 and the two halves of the weights' hash; one entry per layout (oneDNN may pick
// another layout for another batch size).
std::map<std::vector<uint64_t>, std::vector<std::unique_ptr<Packed>>> packed_weights;
size_t packed_bytes = 0;
uint64_t packed_clock = 0;

void evict_packed_weights(size_t incoming) {
  while (packed_bytes + incoming > kPackedBudget && packed_bytes > 0) {
    auto oldest_key = packed_weights.end();
    size_t oldest_index = 0;
    for (auto it = packed_weights.begin(); it != packed_weights.end(); ++it)
      for (size_t i = 0; i < it->second.size(); ++i)
        if (oldest_key == packed_weights.end() ||
            it->second[i]->last_used < oldest_key->second[oldest_index]->last_used) {
          oldest_key = it;
          oldest_index = i;
        }
    auto& list = oldest_key->second;
    packed_bytes -= list[oldest_index]->bytes();
    list.erase(list.begin() + oldest_index);
    if (list.empty()) packed_weights.erase(oldest_key);
  }
}

// The weights at `data` in the layout of `plan`, transformed again only when no cached entry
// holds weights of the same hash in that layout.
const dnnl::memory& packed_for(const InferencePlan& plan, const float* data,
                               dnnl::stream& stream) {
  const size_t bytes = plan.shapes.weights.get_size();
  const auto& wdims = plan.shapes.weights.dims();
  std::vector<uint64_t> key(wdims.begin(), wdims.end());
  const auto hash = unet_native::hash128(data, bytes);
  key.push_back(hash.first);
  key.push_back(hash.second);
  auto found = packed_weights.find(key);
  if (found != packed_weights.end()) {
    for (auto& entry : found->second) {
      if (entry->md == plan.weights_md) {
        entry->last_used = ++packed_clock;
        return entry->memory;
      }
    }
  }
  // Built whole before it enters the cache: a failed transform leaves no half-made entry.
  auto entry = std::make_unique<Packed>();
  entry->md = plan.weights_md;
  entry->memory = dnnl::memory(plan.weights_md, cpu_engine());
  dnnl::memory plain(plan.shapes.weights, cpu_engine(), const_cast<float*>(data));
  reorder(plain, entry->memory, stream);
  stream.wait();
  entry->last_used = ++packed_clock;
  evict_packed_weights(entry->bytes());
  packed_bytes += entry->bytes();
  auto& list = packed_weights[key];
  list.push_back(std::move(entry));
  return list.back()->memory;
}

// inputs: data, weight, bias; outputs: out.
MXReturnValue inference_forward(const std::unordered_map<std::string, std::string>& attrs,
                                std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                                const OpResource& res) {
  MXTensor &data = (*inputs)[0], &weight = (*inputs)[1], &bias = (*inputs)[2];
  return guarded("unet_conv3x3", [&](dnnl::stream& stream) {
    auto& p = plan_for(inference_plans, dims_of(data), weight.shape[0]);
    const dnnl::memory weights = p.plain_weights() ? user_memory(p.shapes.weights, weight)
                                                   : packed_for(p, weight.data<float>(), stream);
    convolve(p.conv, p.shapes, p.src_md, p.dst_md, p.scratchpad_md, weights, data, bias,
             (*outputs)[0], stream);
  });
}

// Registered so that MXNet can build a graph's gradient (a hybridized block always does), never
// meant to run: a network with this operator is for inference.
MXReturnValue inference_backward(const std::unordered_map<std::string, std::string>& attrs,
                                 std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                                 const OpResource& res) {
  MX_ERROR_MSG << "unet_conv3x3 has no backward pass: train with unet_conv3x3_train or nn.Conv2D";
  return MX_FAIL;
}

// ----------------------------------------------------------------------------------- training

// Training takes the inference rule (use_winograd) for every pass, and one more for the weight
// gradient: up to this many output pixels (32x32 at batch 1) Winograd's weight gradient is bound
// by its transformed weights, whose buffers (its scratchpad: 458 MB on a 1024->1024 layer, 2.7x
// the forward's) would set the process's peak; the direct algorithm there costs ~1% of a 512x512
// step of the default model (25 ms on that layer, 13 on 512->1024) and no scratchpad.
constexpr int64_t kWeightGradientBoundPixels = 1024;

struct TrainingPlan {
  Shapes shapes;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data backward_data;
  dnnl::convolution_backward_weights backward_weights;
  dnnl::memory::desc f_src, f_weights, f_dst;          // forward
  dnnl::memory::desc d_diff_dst, d_weights, d_diff_src;  // backward data
  dnnl::memory::desc w_src, w_diff_dst, w_diff_weights;  // backward weights
  dnnl::memory::desc f_scratchpad, d_scratchpad, w_scratchpad;
  TrainingPlan(const dims& src_dims, int64_t out_channels) : shapes(src_dims, out_channels) {
    const auto& s = shapes;
    dnnl::algorithm algorithm = dnnl::algorithm::convolution_direct;
    auto fpd = use_winograd(src_dims)
        ? forward_pd(shapes, dnnl::prop_kind::forward_training, &algorithm)
        : direct_forward_pd(shapes, dnnl::prop_kind::forward_training, /*plain=*/false);
    dnnl::convolution_backward_data::desc data_desc(algorithm, s.any_src, s.any_weights,
                                                    s.any_dst, kOne, kOne, kOne);
    dnnl::convolution_backward_data::primitive_desc dpd(data_desc, user_scratchpad(),
                                                        cpu_engine(), fpd);
    const auto weights_algorithm = output_pixels(src_dims) > kWeightGradientBoundPixels
        ? algorithm : dnnl::algorithm::convolution_direct;
    dnnl::convolution_backward_weights::desc weights_desc(weights_algorithm, s.any_src,
                                                          s.any_weights, s.bias, s.any_dst,
                                                          kOne, kOne, kOne);
    dnnl::convolution_backward_weights::primitive_desc wpd(weights_desc, user_scratchpad(),
                                                           cpu_engine(), fpd);
    forward = dnnl::convolution_forward(fpd);
    backward_data = dnnl::convolution_backward_data(dpd);
    backward_weights = dnnl::convolution_backward_weights(wpd);
    f_src = fpd.src_desc();
    f_weights = fpd.weights_desc();
    f_dst = fpd.dst_desc();
    d_diff_dst = dpd.diff_dst_desc();
    d_weights = dpd.weights_desc();
    d_diff_src = dpd.diff_src_desc();
    w_src = wpd.src_desc();
    w_diff_dst = wpd.diff_dst_desc();
    w_diff_weights = wpd.diff_weights_desc();
    f_scratchpad = fpd.scratchpad_desc();
    d_scratchpad = dpd.scratchpad_desc();
    w_scratchpad = wpd.scratchpad_desc();
  }
};

std::map<std::vector<int64_t>, std::unique_ptr<TrainingPlan>> training_plans;  // as above

// inputs: data, weight, bias; outputs: out.
MXReturnValue training_forward(const std::unordered_map<std::string, std::string>& attrs,
                               std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                               const OpResource& res) {
  MXTensor &data = (*inputs)[0], &weight = (*inputs)[1], &bias = (*inputs)[2];
  return guarded("unet_conv3x3_train", [&](dnnl::stream& stream) {
    auto& p = plan_for(training_plans, dims_of(data), weight.shape[0]);
    auto weights = in_layout(user_memory(p.shapes.weights, weight), p.f_weights, 1, stream);
    convolve(p.forward, p.shapes, p.f_src, p.f_dst, p.f_scratchpad, weights, data, bias,
             (*outputs)[0], stream);
  });
}

// inputs: d_out, data, weight, bias, out; outputs: d_data, d_weight, d_bias (written).
MXReturnValue training_backward(const std::unordered_map<std::string, std::string>& attrs,
                                std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                                const OpResource& res) {
  MXTensor &d_out = (*inputs)[0], &data = (*inputs)[1], &weight = (*inputs)[2];
  return guarded("unet_conv3x3_train backward", [&](dnnl::stream& stream) {
    auto& p = plan_for(training_plans, dims_of(data), weight.shape[0]);
    const auto& s = p.shapes;
    auto user_d_out = user_memory(s.dst, d_out);
    auto user_d_data = user_memory(s.src, (*outputs)[0]);
    auto user_d_weight = user_memory(s.weights, (*outputs)[1]);
    // Data gradient. Slots: 0 the output gradient (kept for the weights' pass where the
    // layouts agree), 1 the weights, 2 the data gradient.
    auto diff_dst = in_layout(user_d_out, p.d_diff_dst, 0, stream);
    auto weights = in_layout(user_memory(s.weights, weight), p.d_weights, 1, stream);
    auto diff_src = out_layout(user_d_data, p.d_diff_src, 2);
    run(p.backward_data, p.d_scratchpad, {{DNNL_ARG_DIFF_DST, diff_dst},
                                          {DNNL_ARG_WEIGHTS, weights},
                                          {DNNL_ARG_DIFF_SRC, diff_src}}, stream);
    copy_back(diff_src, user_d_data, stream);
    stream.wait();
    // Weight and bias gradients. Slots: 2 the data, 1 the output gradient where its layout
    // differs from the data pass's, 3 the weight gradient.
    auto src = in_layout(user_memory(s.src, data), p.w_src, 2, stream);
    auto w_diff_dst = p.w_diff_dst == diff_dst.get_desc()
        ? diff_dst : in_layout(user_d_out, p.w_diff_dst, 1, stream);
    auto diff_weights = out_layout(user_d_weight, p.w_diff_weights, 3);
    run(p.backward_weights, p.w_scratchpad,
        {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, w_diff_dst},
         {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
         {DNNL_ARG_DIFF_BIAS, user_memory(s.bias, (*outputs)[2])}}, stream);
    copy_back(diff_weights, user_d_weight, stream);
  });
}

// ------------------------------------------------------------------------------ registration

MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs,
                          int* num_in, int* num_out) {
  return unet_native::three_inputs_one_output(num_in, num_out);
}

MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<int>* in_types, std::vector<int>* out_types) {
  return unet_native::float32_only("unet_conv3x3", *in_types, out_types);
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const std::vector<unsigned int>& x = (*in_shapes)[0];
  const std::vector<unsigned int>& w = (*in_shapes)[1];
  if (x.size() != 4) {
    MX_ERROR_MSG << "unet_conv3x3: data must be (N, C, H, W)";
    return MX_FAIL;
  }
  if (w.size() != 4 || w[1] != x[1] || w[2] != 3 || w[3] != 3) {
    MX_ERROR_MSG << "unet_conv3x3: weight must be (K, " << x[1] << ", 3, 3)";
    return MX_FAIL;
  }
  if (!unet_native::channel_shape(&(*in_shapes)[2], w[0])) {
    MX_ERROR_MSG << "unet_conv3x3: bias must have shape (" << w[0] << ",)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = {x[0], w[0], x[2], x[3]};
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(unet_conv3x3)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(inference_forward, "cpu")
    .setBackward(inference_backward, "cpu");

REGISTER_OP(unet_conv3x3_train)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(training_forward, "cpu")
    .setBackward(training_backward, "cpu");

// 1 when oneDNN has a Winograd convolution for this CPU (AVX-512), else 0: elsewhere these
// operators would only add layout conversions to oneDNN's usual kernels (unet/native checks).
extern "C" int unet_winograd_supported() {
  try {
    const Shapes shapes({1, 64, 64, 64}, 64);
    for (auto kind : {dnnl::prop_kind::forward_inference, dnnl::prop_kind::forward_training}) {
      dnnl::convolution_forward::desc desc(kind, dnnl::algorithm::convolution_winograd,
                                           shapes.any_src, shapes.any_weights, shapes.bias,
                                           shapes.any_dst, kOne, kOne, kOne);
      dnnl::convolution_forward::primitive_desc(desc, user_scratchpad(), cpu_engine());
    }
    return 1;
  } catch (const std::exception&) {
    return 0;
  }
}

MXReturnValue initialize(int version) {
  return version >= 10700 ? MX_SUCCESS : MX_FAIL;
}

// Bytes held by the work buffers (slots 0-3: tensors in the convolution's layouts, 4: the
// primitives' scratchpads) and, for slot 5, by the cached transformed weights; for the memory
// records (benchmarks) and tests.
extern "C" size_t unet_conv3x3_buffer_bytes(int slot) {
  std::lock_guard<std::mutex> hold(lock);
  if (slot >= 0 && slot < 5) return scratch[slot].size;
  return slot == 5 ? packed_bytes : 0;
}
