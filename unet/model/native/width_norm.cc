// Layer normalization over the last axis, fused: one MXNet operator for the forward pass and one
// for the backward pass, each a single sweep over the rows with OpenMP.
//
// Loaded by unet/native.py through MXNet's custom-operator library API (mx.library.load): the
// operator `unet_width_norm(x, gamma, beta, eps=1e-5)` computes, for every row r of x seen as
// (M, W) with W its last axis,
//     y[r] = (x[r] - mean(x[r])) / sqrt(var(x[r]) + eps) * gamma + beta
// with the biased variance, exactly as mxnet.gluon.nn.LayerNorm(axis=-1). The backward pass
// recomputes each row's mean and variance from x (cheaper than storing them: the row is read
// anyway) and writes dx, dgamma and dbeta. float32 only: AMP keeps it in float32.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"
#include "operator.h"

using namespace mxnet::ext;

namespace {

float parse_eps(const std::unordered_map<std::string, std::string>& attrs) {
  auto it = attrs.find("eps");
  return it == attrs.end() ? 1e-5f : std::stof(it->second);
}

// Mean and 1/sqrt(var + eps) of one row, two passes (the row sits in L1 for the second).
inline void row_stats(const float* x, int64_t w, float eps, float* mean, float* rstd) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < w; ++i) sum += x[i];
  const float m = sum / w;
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < w; ++i) sq += (x[i] - m) * (x[i] - m);
  *mean = m;
  *rstd = 1.f / std::sqrt(sq / w + eps);
}

MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs,
                      std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                      const OpResource& res) {
  MXTensor& xt = (*inputs)[0];
  const int64_t w = xt.shape.back();
  const int64_t rows = xt.size() / w;
  const float* x = xt.data<float>();
  const float* gamma = (*inputs)[1].data<float>();
  const float* beta = (*inputs)[2].data<float>();
  float* y = (*outputs)[0].data<float>();
  const float eps = parse_eps(attrs);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * w;
    float* yr = y + r * w;
    float mean, rstd;
    row_stats(xr, w, eps, &mean, &rstd);
#pragma omp simd
    for (int64_t i = 0; i < w; ++i) yr[i] = (xr[i] - mean) * rstd * gamma[i] + beta[i];
  }
  return MX_SUCCESS;
}

// inputs: dy, x, gamma, beta, y (the output gradient, the forward inputs, the forward output);
// outputs: dx, dgamma, dbeta.
MXReturnValue backward(const std::unordered_map<std::string, std::string>& attrs,
                       std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                       const OpResource& res) {
  const float* dy = (*inputs)[0].data<float>();
  MXTensor& xt = (*inputs)[1];
  const float* x = xt.data<float>();
  const float* gamma = (*inputs)[2].data<float>();
  float* dx = (*outputs)[0].data<float>();
  float* dgamma = (*outputs)[1].data<float>();
  float* dbeta = (*outputs)[2].data<float>();
  const int64_t w = xt.shape.back();
  const int64_t rows = xt.size() / w;
  const float eps = parse_eps(attrs);
  const int threads = omp_get_max_threads();
  // Per-thread partial sums of dgamma and dbeta, added up at the end.
  std::vector<float> partial(static_cast<size_t>(threads) * 2 * w, 0.f);
#pragma omp parallel num_threads(threads)
  {
    float* pg = partial.data() + static_cast<size_t>(omp_get_thread_num()) * 2 * w;
    float* pb = pg + w;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * w;
      const float* dyr = dy + r * w;
      float* dxr = dx + r * w;
      float mean, rstd;
      row_stats(xr, w, eps, &mean, &rstd);
      float sum_g = 0.f, sum_gx = 0.f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t i = 0; i < w; ++i) {
        const float xhat = (xr[i] - mean) * rstd;
        const float g = dyr[i] * gamma[i];
        sum_g += g;
        sum_gx += g * xhat;
        pg[i] += dyr[i] * xhat;
        pb[i] += dyr[i];
      }
      const float a = sum_g / w, b = sum_gx / w;
#pragma omp simd
      for (int64_t i = 0; i < w; ++i) {
        const float xhat = (xr[i] - mean) * rstd;
        dxr[i] = rstd * (dyr[i] * gamma[i] - a - xhat * b);
      }
    }
  }
  std::memset(dgamma, 0, sizeof(float) * w);
  std::memset(dbeta, 0, sizeof(float) * w);
  for (int t = 0; t < threads; ++t) {
    const float* pg = partial.data() + static_cast<size_t>(t) * 2 * w;
    for (int64_t i = 0; i < w; ++i) {
      dgamma[i] += pg[i];
      dbeta[i] += pg[w + i];
    }
  }
  return MX_SUCCESS;
}

MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs,
                          int* num_in, int* num_out) {
  return unet_native::three_inputs_one_output(num_in, num_out);
}

MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<int>* in_types, std::vector<int>* out_types) {
  return unet_native::float32_only("unet_width_norm", *in_types, out_types);
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const std::vector<unsigned int>& x = (*in_shapes)[0];
  if (x.size() < 2) {
    MX_ERROR_MSG << "unet_width_norm: input needs at least 2 axes";
    return MX_FAIL;
  }
  for (int p = 1; p <= 2; ++p) {
    if (!unet_native::channel_shape(&(*in_shapes)[p], x.back())) {
      MX_ERROR_MSG << "unet_width_norm: gamma and beta must have shape (" << x.back() << ",)";
      return MX_FAIL;
    }
  }
  (*out_shapes)[0] = x;
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(unet_width_norm)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu")
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape);

MXReturnValue initialize(int version) {
  return version >= 10700 ? MX_SUCCESS : MX_FAIL;
}
