// RoIAlign on the CPU: one pass per RoI, parallel over RoIs (forward) or channels (backward).
//
// NCHW inputs loop channel by channel over a per-RoI table of the 4 bilinear taps of every
// sample; channels_last inputs loop over samples with the channels innermost (contiguous and
// vectorisable), and give channels_last outputs and gradients.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "roi_align.h"
#include "roi_align_common.h"

namespace maskrcnn {
namespace {

constexpr int64_t kMinParallelWork = 1 << 15;  // multiply-adds below which one thread is faster

template <typename acc_t>
struct Tap4 {
  int64_t pix[4];  // y * W + x of the four neighbours
  acc_t w[4];
};

// Taps of every sample of RoI `g`, bin-major: bin (ph, pw) owns grid_h * grid_w consecutive samples.
template <typename acc_t>
void precompute_taps(const RoIGeometry<acc_t>& g, int pooled_h, int pooled_w, int height, int width,
                     std::vector<Tap4<acc_t>>& taps) {
  taps.resize(static_cast<size_t>(pooled_h) * pooled_w * g.grid_h * g.grid_w);
  size_t t = 0;
  for (int ph = 0; ph < pooled_h; ++ph) {
    for (int pw = 0; pw < pooled_w; ++pw) {
      for (int iy = 0; iy < g.grid_h; ++iy) {
        const auto ya = axis_weights(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
        for (int ix = 0; ix < g.grid_w; ++ix) {
          const auto xa = axis_weights(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
          Tap4<acc_t>& tap = taps[t++];
          const bool valid = ya.valid && xa.valid;
          tap.pix[0] = static_cast<int64_t>(ya.low) * width + xa.low;
          tap.pix[1] = static_cast<int64_t>(ya.low) * width + xa.high;
          tap.pix[2] = static_cast<int64_t>(ya.high) * width + xa.low;
          tap.pix[3] = static_cast<int64_t>(ya.high) * width + xa.high;
          tap.w[0] = valid ? ya.w_low * xa.w_low : acc_t(0);
          tap.w[1] = valid ? ya.w_low * xa.w_high : acc_t(0);
          tap.w[2] = valid ? ya.w_high * xa.w_low : acc_t(0);
          tap.w[3] = valid ? ya.w_high * xa.w_high : acc_t(0);
        }
      }
    }
  }
}

template <typename scalar_t>
void forward_kernel(const scalar_t* input, const at::opmath_type<scalar_t>* rois, int64_t K, int64_t N, int64_t C,
                    int H, int W, int pooled_h, int pooled_w, at::opmath_type<scalar_t> scale, int sampling_ratio,
                    bool aligned, bool nhwc, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bins = static_cast<int64_t>(pooled_h) * pooled_w;
  // Small problems run on the calling thread: waking the pool costs more than they do.
  const int64_t grain = std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(1, C * bins * 4));
  at::parallel_for(0, K, grain, [&](int64_t k0, int64_t k1) {
    std::vector<Tap4<acc_t>> taps;
    std::vector<acc_t> acc(nhwc ? C : 0);
    for (int64_t k = k0; k < k1; ++k) {
      const auto g = roi_geometry(rois + k * 5, scale, pooled_h, pooled_w, sampling_ratio, aligned);
      TORCH_CHECK(g.batch >= 0 && g.batch < N, "roi_align: rois[", k, ", 0] = ", rois[k * 5],
                  " is not a batch index in [0, ", N, ")");
      precompute_taps(g, pooled_h, pooled_w, H, W, taps);
      const int64_t per_bin = static_cast<int64_t>(g.grid_h) * g.grid_w;
      const acc_t inv_count = acc_t(1) / g.count;
      if (!nhwc) {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = input + (g.batch * C + c) * H * W;
          scalar_t* o = out + (k * C + c) * bins;
          const Tap4<acc_t>* tap = taps.data();
          for (int64_t b = 0; b < bins; ++b) {
            acc_t sum = 0;
            for (int64_t s = 0; s < per_bin; ++s, ++tap) {
              sum += tap->w[0] * static_cast<acc_t>(plane[tap->pix[0]]) +
                     tap->w[1] * static_cast<acc_t>(plane[tap->pix[1]]) +
                     tap->w[2] * static_cast<acc_t>(plane[tap->pix[2]]) +
                     tap->w[3] * static_cast<acc_t>(plane[tap->pix[3]]);
            }
            o[b] = static_cast<scalar_t>(sum * inv_count);
          }
        }
      } else {
        const scalar_t* image = input + g.batch * H * W * C;
        const Tap4<acc_t>* tap = taps.data();
        for (int64_t b = 0; b < bins; ++b) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          acc_t* a = acc.data();
          for (int64_t s = 0; s < per_bin; ++s, ++tap) {
            for (int q = 0; q < 4; ++q) {
              const acc_t w = tap->w[q];
              if (w == acc_t(0)) continue;
              const scalar_t* px = image + tap->pix[q] * C;
              for (int64_t c = 0; c < C; ++c) a[c] += w * static_cast<acc_t>(px[c]);
            }
          }
          scalar_t* o = out + (k * bins + b) * C;  // channels_last output: [K, ph, pw, C]
          for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(a[c] * inv_count);
        }
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_kernel(const scalar_t* grad, const acc_t* rois, int64_t K, int64_t N, int64_t C, int H, int W,
                     int pooled_h, int pooled_w, acc_t scale, int sampling_ratio, bool aligned, bool nhwc,
                     acc_t* grad_input) {
  const int64_t bins = static_cast<int64_t>(pooled_h) * pooled_w;
  for (int64_t k = 0; k < K; ++k) {  // validate up front: errors must not depend on thread timing
    const int64_t b = static_cast<int64_t>(rois[k * 5]);
    TORCH_CHECK(b >= 0 && b < N, "roi_align backward: rois[", k, ", 0] = ", rois[k * 5],
                " is not a batch index in [0, ", N, ")");
  }
  // Each thread owns a range of channels, so the scatter-adds never collide. Small problems
  // run on the calling thread.
  const bool small = K * C * bins * 4 < kMinParallelWork;
  const int64_t grain = small ? std::max<int64_t>(C, 1) : std::max<int64_t>(1, C / std::max(1, at::get_num_threads()));
  at::parallel_for(0, C, grain, [&](int64_t c0, int64_t c1) {
    std::vector<Tap4<acc_t>> taps;
    for (int64_t k = 0; k < K; ++k) {
      const auto g = roi_geometry(rois + k * 5, scale, pooled_h, pooled_w, sampling_ratio, aligned);
      precompute_taps(g, pooled_h, pooled_w, H, W, taps);
      const int64_t per_bin = static_cast<int64_t>(g.grid_h) * g.grid_w;
      const acc_t inv_count = acc_t(1) / g.count;
      if (!nhwc) {
        for (int64_t c = c0; c < c1; ++c) {
          acc_t* plane = grad_input + (g.batch * C + c) * H * W;
          const scalar_t* go = grad + (k * C + c) * bins;
          const Tap4<acc_t>* tap = taps.data();
          for (int64_t b = 0; b < bins; ++b) {
            const acc_t v = static_cast<acc_t>(go[b]) * inv_count;
            for (int64_t s = 0; s < per_bin; ++s, ++tap) {
              for (int q = 0; q < 4; ++q) plane[tap->pix[q]] += tap->w[q] * v;
            }
          }
        }
      } else {
        acc_t* image = grad_input + g.batch * H * W * C;
        const Tap4<acc_t>* tap = taps.data();
        for (int64_t b = 0; b < bins; ++b) {
          const scalar_t* go = grad + (k * bins + b) * C;
          for (int64_t s = 0; s < per_bin; ++s, ++tap) {
            for (int q = 0; q < 4; ++q) {
              const acc_t w = tap->w[q] * inv_count;
              if (w == acc_t(0)) continue;
              acc_t* px = image + tap->pix[q] * C;
              for (int64_t c = c0; c < c1; ++c) px[c] += w * static_cast<acc_t>(go[c]);
            }
          }
        }
      }
    }
  });
}

void check_args(const at::Tensor& rois, int64_t pooled_h, int64_t pooled_w) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "roi_align: rois must be [K, 5] (batch_index, x1, y1, x2, y2), got ",
              rois.sizes());
  TORCH_CHECK(rois.is_floating_point(), "roi_align: rois must be floating point, got ", rois.scalar_type());
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, "roi_align: output size must be positive, got (", pooled_h, ", ",
              pooled_w, ")");
}

}  // namespace

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.device().is_cpu() && rois.device().is_cpu(), "roi_align_forward_cpu: tensors must be on the CPU");
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be [N, C, H, W], got ", input.sizes());
  check_args(rois, pooled_h, pooled_w);
  const int64_t K = rois.size(0), N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const bool nhwc = C > 1 && input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();
  const auto fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({K, C, pooled_h, pooled_w}, input.options().memory_format(fmt));
  if (K == 0 || C == 0) return out;
  TORCH_CHECK(H > 0 && W > 0, "roi_align: input has an empty spatial size ", input.sizes());
  const at::Tensor x = input.contiguous(fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor r = rois.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), r.data_ptr<acc_t>(), K, N, C, static_cast<int>(H),
                             static_cast<int>(W), static_cast<int>(pooled_h), static_cast<int>(pooled_w),
                             static_cast<acc_t>(spatial_scale), static_cast<int>(sampling_ratio), aligned, nhwc,
                             out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t batch, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                  bool channels_last) {
  TORCH_CHECK(grad.device().is_cpu() && rois.device().is_cpu(), "roi_align_backward_cpu: tensors must be on the CPU");
  check_args(rois, pooled_h, pooled_w);
  const int64_t K = rois.size(0);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == K && grad.size(1) == channels && grad.size(2) == pooled_h &&
                  grad.size(3) == pooled_w,
              "roi_align backward: grad must be [", K, ", ", channels, ", ", pooled_h, ", ", pooled_w, "], got ",
              grad.sizes());
  const bool nhwc = channels_last && channels > 1;
  const auto fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  // at::zeros ignores a memory format in the options; empty + zero_ keeps it.
  at::Tensor grad_input = at::empty({batch, channels, height, width}, grad.options().memory_format(fmt)).zero_();
  if (K == 0 || grad_input.numel() == 0) return grad_input;
  const at::Tensor go = grad.contiguous(fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor r = rois.to(acc_type).contiguous();
    // Reduced precision accumulates in a float buffer, converted once at the end.
    at::Tensor buf = grad.scalar_type() == acc_type ? grad_input : grad_input.to(acc_type);
    backward_kernel<scalar_t, acc_t>(go.data_ptr<scalar_t>(), r.data_ptr<acc_t>(), K, batch, channels,
                                     static_cast<int>(height), static_cast<int>(width), static_cast<int>(pooled_h),
                                     static_cast<int>(pooled_w), static_cast<acc_t>(spatial_scale),
                                     static_cast<int>(sampling_ratio), aligned, nhwc, buf.data_ptr<acc_t>());
    if (!buf.is_same(grad_input)) grad_input.copy_(buf);
  });
  return grad_input;
}

}  // namespace maskrcnn
