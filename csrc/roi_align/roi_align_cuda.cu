// RoIAlign on CUDA: one thread per output element; the geometry is shared with the CPU kernel.
//
// NCHW: threads run over (k, c, ph, pw); channels_last: over (k, ph, pw, c) with c fastest, so a
// warp reads 32 consecutive channels of one pixel (coalesced) and the output is channels_last.
// The layout is a template parameter (one kernel each), and in-plane offsets are 32-bit when the
// tensor fits: the NCHW loads then take no 64-bit multiply by a runtime stride.
// Backward scatters with atomics (non-deterministic order), into a float buffer for half types.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "roi_align.h"
#include "roi_align_common.h"

namespace maskrcnn {
namespace {

constexpr int kThreads = 256;

inline bool fits_int(int64_t a, int64_t b, int64_t c) {
  // Half of INT_MAX, so that the grid-stride step cannot overflow either.
  constexpr int64_t kMax = std::numeric_limits<int>::max() / 2;
  return a < kMax && b < kMax && c < kMax;
}

inline int64_t blocks_for(int64_t n) {
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 22);  // grid-stride beyond this
}

// index_t: in-plane offsets (int when the tensor's numel fits, see fits_int). pix_stride is the
// compile-time 1 of the NCHW kernels (no runtime multiply in the loads) or C for channels_last.
template <typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ acc_t bin_value(const scalar_t* __restrict__ base, index_t pix_stride,
                                           const RoIGeometry<acc_t>& g, int ph, int pw, int H, int W) {
  acc_t sum = 0;
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const auto ya = axis_weights(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), H);
    if (!ya.valid) continue;
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const auto xa = axis_weights(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), W);
      if (!xa.valid) continue;
      const index_t rl = static_cast<index_t>(ya.low) * W, rh = static_cast<index_t>(ya.high) * W;
      sum += ya.w_low * xa.w_low * static_cast<acc_t>(base[(rl + xa.low) * pix_stride]) +
             ya.w_low * xa.w_high * static_cast<acc_t>(base[(rl + xa.high) * pix_stride]) +
             ya.w_high * xa.w_low * static_cast<acc_t>(base[(rh + xa.low) * pix_stride]) +
             ya.w_high * xa.w_high * static_cast<acc_t>(base[(rh + xa.high) * pix_stride]);
    }
  }
  return sum / g.count;
}

// index_t: int when every index fits, since 64-bit division (the index decomposition) is slow.
// nhwc is a template parameter: each layout gets its own kernel without the other's index math.
template <typename scalar_t, typename acc_t, typename index_t, bool nhwc>
__global__ void forward_kernel(const scalar_t* __restrict__ input, const acc_t* __restrict__ rois, index_t total,
                               int64_t N, index_t C, int H, int W, int pooled_h, int pooled_w, acc_t scale,
                               int sampling_ratio, bool aligned, scalar_t* __restrict__ out) {
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    index_t c, k;
    int ph, pw;
    if constexpr (nhwc) {  // out is [K, ph, pw, C]
      c = idx % C;
      pw = static_cast<int>((idx / C) % pooled_w);
      ph = static_cast<int>((idx / C / pooled_w) % pooled_h);
      k = idx / C / pooled_w / pooled_h;
    } else {  // out is [K, C, ph, pw]
      pw = static_cast<int>(idx % pooled_w);
      ph = static_cast<int>((idx / pooled_w) % pooled_h);
      c = (idx / pooled_w / pooled_h) % C;
      k = idx / pooled_w / pooled_h / C;
    }
    const auto g = roi_geometry(rois + static_cast<int64_t>(k) * 5, scale, pooled_h, pooled_w, sampling_ratio, aligned);
    acc_t v = 0;
    if (g.batch >= 0 && g.batch < N) {  // an invalid batch index gives zeros (checking would cost a sync)
      const scalar_t* base = nhwc ? input + g.batch * H * W * static_cast<int64_t>(C) + c
                                  : input + (g.batch * C + c) * static_cast<int64_t>(H) * W;
      v = bin_value<scalar_t, acc_t, index_t>(base, nhwc ? C : index_t(1), g, ph, pw, H, W);
    }
    out[idx] = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t, typename acc_t, typename index_t, bool nhwc>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, const acc_t* __restrict__ rois, index_t total,
                                int64_t N, index_t C, int H, int W, int pooled_h, int pooled_w, acc_t scale,
                                int sampling_ratio, bool aligned, acc_t* __restrict__ grad_input) {
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    index_t c, k;
    int ph, pw;
    if constexpr (nhwc) {
      c = idx % C;
      pw = static_cast<int>((idx / C) % pooled_w);
      ph = static_cast<int>((idx / C / pooled_w) % pooled_h);
      k = idx / C / pooled_w / pooled_h;
    } else {
      pw = static_cast<int>(idx % pooled_w);
      ph = static_cast<int>((idx / pooled_w) % pooled_h);
      c = (idx / pooled_w / pooled_h) % C;
      k = idx / pooled_w / pooled_h / C;
    }
    const auto g = roi_geometry(rois + static_cast<int64_t>(k) * 5, scale, pooled_h, pooled_w, sampling_ratio, aligned);
    if (g.batch < 0 || g.batch >= N) continue;
    const acc_t v = static_cast<acc_t>(grad[idx]) / g.count;
    const index_t stride = nhwc ? C : index_t(1);
    acc_t* base = nhwc ? grad_input + g.batch * H * W * static_cast<int64_t>(C) + c
                       : grad_input + (g.batch * C + c) * static_cast<int64_t>(H) * W;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      const auto ya = axis_weights(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), H);
      if (!ya.valid) continue;
      for (int ix = 0; ix < g.grid_w; ++ix) {
        const auto xa = axis_weights(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), W);
        if (!xa.valid) continue;
        const index_t rl = static_cast<index_t>(ya.low) * W, rh = static_cast<index_t>(ya.high) * W;
        gpuAtomicAdd(base + (rl + xa.low) * stride, ya.w_low * xa.w_low * v);
        gpuAtomicAdd(base + (rl + xa.high) * stride, ya.w_low * xa.w_high * v);
        gpuAtomicAdd(base + (rh + xa.low) * stride, ya.w_high * xa.w_low * v);
        gpuAtomicAdd(base + (rh + xa.high) * stride, ya.w_high * xa.w_high * v);
      }
    }
  }
}

}  // namespace

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.is_cuda() && rois.is_cuda(), "roi_align_forward_cuda: tensors must be on a CUDA device");
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t K = rois.size(0), N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const bool nhwc = C > 1 && input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();
  const auto fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({K, C, pooled_h, pooled_w}, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  TORCH_CHECK(H > 0 && W > 0, "roi_align: input has an empty spatial size ", input.sizes());
  const at::Tensor x = input.contiguous(fmt);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor r = rois.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const int64_t total = out.numel();
    auto launch = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      auto kernel = nhwc ? forward_kernel<scalar_t, acc_t, index_t, true> : forward_kernel<scalar_t, acc_t, index_t, false>;
      kernel<<<blocks_for(total), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), r.data_ptr<acc_t>(), static_cast<index_t>(total), N, static_cast<index_t>(C),
          static_cast<int>(H), static_cast<int>(W), static_cast<int>(pooled_h), static_cast<int>(pooled_w),
          static_cast<acc_t>(spatial_scale), static_cast<int>(sampling_ratio), aligned, out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (fits_int(total, K * 5, x.numel())) launch(int(0)); else launch(int64_t(0));
  });
  return out;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_h, int64_t pooled_w, int64_t batch, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                   bool channels_last) {
  TORCH_CHECK(grad.is_cuda() && rois.is_cuda(), "roi_align_backward_cuda: tensors must be on a CUDA device");
  const int64_t K = rois.size(0);
  c10::cuda::CUDAGuard guard(grad.device());
  at::globalContext().alertNotDeterministic("maskrcnn roi_align_backward_cuda");
  const bool nhwc = channels_last && channels > 1;
  const auto fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  // at::zeros ignores a memory format in the options; empty + zero_ keeps it.
  at::Tensor grad_input = at::empty({batch, channels, height, width}, grad.options().memory_format(fmt)).zero_();
  if (K == 0 || grad_input.numel() == 0) return grad_input;
  const at::Tensor go = grad.contiguous(fmt);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor r = rois.to(acc_type).contiguous();
    at::Tensor buf = grad.scalar_type() == acc_type ? grad_input : grad_input.to(acc_type);
    const int64_t total = go.numel();
    auto launch = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      auto kernel = nhwc ? backward_kernel<scalar_t, acc_t, index_t, true> : backward_kernel<scalar_t, acc_t, index_t, false>;
      kernel<<<blocks_for(total), kThreads, 0, stream>>>(
          go.data_ptr<scalar_t>(), r.data_ptr<acc_t>(), static_cast<index_t>(total), batch,
          static_cast<index_t>(channels), static_cast<int>(height), static_cast<int>(width),
          static_cast<int>(pooled_h), static_cast<int>(pooled_w), static_cast<acc_t>(spatial_scale),
          static_cast<int>(sampling_ratio), aligned, buf.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (fits_int(total, K * 5, buf.numel())) launch(int(0)); else launch(int64_t(0));
    if (!buf.is_same(grad_input)) grad_input.copy_(buf);
  });
  return grad_input;
}

}  // namespace maskrcnn
