// RoIAlign on the CPU.
//
// The bilinear taps of a RoI are separable: row taps depend on (ph, iy) and column taps on
// (pw, ix). They are computed once per RoI into small tables, and every channel reuses them.
//
// NCHW: threads split the channels and loop over the RoIs inside, so the feature planes of one
// channel (N x H x W) stay in cache while all RoIs read (forward) or scatter into (backward) them;
// RoI-outer order would walk all C planes per RoI and miss the cache on nearly every tap. Rows
// are interpolated as contiguous spans (see forward_nchw).
// channels_last: a tap reads C contiguous values, so the channels are the inner (vectorised)
// loop; the forward splits RoIs across threads, the backward splits channels (no two threads
// add into the same element). channels_last inputs give channels_last outputs and gradients.
// Reduced precision (half, bfloat16) computes and accumulates in float32.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

#include "roi_align.h"
#include "roi_align_common.h"

namespace maskrcnn {
namespace {

constexpr int64_t kMinParallelWork = 1 << 15;  // taps below which one thread is faster than waking the pool

template <typename acc_t>
struct AxisTap {
  int64_t low, high;  // pixel row (or column) of the two neighbours
  acc_t w_low, w_high;  // 0 for a sample outside the map
};

// The taps of all RoIs. RoI k's row taps are y[ybeg[k] + ph * grid_h + iy], likewise columns.
template <typename acc_t>
struct TapTables {
  std::vector<int64_t> batch, ybeg, xbeg;
  std::vector<int> grid_h, grid_w;
  std::vector<acc_t> inv_count;
  std::vector<int64_t> xmin, xmax;  // columns touched by RoI k's valid taps, [xmin, xmax] (xmax < xmin: none)
  std::vector<AxisTap<acc_t>> y, x;
};

template <typename acc_t>
AxisTap<acc_t> make_tap(acc_t v, int size) {
  const auto a = axis_weights(v, size);
  return {a.low, a.high, a.valid ? a.w_low : acc_t(0), a.valid ? a.w_high : acc_t(0)};
}

template <typename acc_t>
TapTables<acc_t> build_tables(const acc_t* rois, int64_t K, int64_t N, int H, int W, int pooled_h, int pooled_w,
                              acc_t scale, int sampling_ratio, bool aligned) {
  TapTables<acc_t> t;
  t.batch.resize(K), t.ybeg.resize(K + 1), t.xbeg.resize(K + 1), t.grid_h.resize(K), t.grid_w.resize(K);
  t.inv_count.resize(K), t.xmin.resize(K), t.xmax.resize(K);
  std::vector<RoIGeometry<acc_t>> geo(K);
  t.ybeg[0] = t.xbeg[0] = 0;
  for (int64_t k = 0; k < K; ++k) {
    geo[k] = roi_geometry(rois + k * 5, scale, pooled_h, pooled_w, sampling_ratio, aligned);
    TORCH_CHECK(geo[k].batch >= 0 && geo[k].batch < N, "roi_align: rois[", k, ", 0] = ", rois[k * 5],
                " is not a batch index in [0, ", N, ")");
    t.batch[k] = geo[k].batch;
    t.grid_h[k] = geo[k].grid_h, t.grid_w[k] = geo[k].grid_w;
    t.inv_count[k] = acc_t(1) / geo[k].count;
    t.ybeg[k + 1] = t.ybeg[k] + static_cast<int64_t>(pooled_h) * geo[k].grid_h;
    t.xbeg[k + 1] = t.xbeg[k] + static_cast<int64_t>(pooled_w) * geo[k].grid_w;
  }
  t.y.resize(t.ybeg[K]), t.x.resize(t.xbeg[K]);
  at::parallel_for(0, K, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const auto& g = geo[k];
      AxisTap<acc_t>* ty = t.y.data() + t.ybeg[k];
      for (int ph = 0; ph < pooled_h; ++ph)
        for (int iy = 0; iy < g.grid_h; ++iy) *ty++ = make_tap(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), H);
      AxisTap<acc_t>* tx = t.x.data() + t.xbeg[k];
      int64_t lo = W, hi = -1;
      for (int pw = 0; pw < pooled_w; ++pw) {
        for (int ix = 0; ix < g.grid_w; ++ix, ++tx) {
          *tx = make_tap(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), W);
          if (tx->w_low != acc_t(0) || tx->w_high != acc_t(0)) lo = std::min(lo, tx->low), hi = std::max(hi, tx->high);
        }
      }
      t.xmin[k] = lo, t.xmax[k] = hi;
    }
  });
  return t;
}

template <typename acc_t>
int64_t total_taps(const TapTables<acc_t>& t, int pooled_h, int pooled_w) {
  int64_t n = 0;
  for (size_t k = 0; k < t.grid_h.size(); ++k) n += static_cast<int64_t>(t.grid_h[k]) * t.grid_w[k];
  return n * pooled_h * pooled_w * 4;
}

// ------------------------------------------------------------------------------------- NCHW
// Separable in two passes per (channel, RoI), over the RoI's column span [xmin, xmax]:
// forward: rows[iy][j] = bilinear mix of the two taps' rows (contiguous, vectorised), then each
// bin gathers its column taps from that small buffer; backward is the transpose: column taps
// scatter into a small per-bin-row buffer, which is then added to the two tap rows of the
// gradient plane (contiguous). Both avoid per-tap gathers and read-modify-write chains on the
// plane (neighbouring samples share pixels).
template <typename scalar_t, typename acc_t>
void forward_nchw(const scalar_t* input, const TapTables<acc_t>& t, int64_t K, int64_t C, int H, int W,
                  int pooled_h, int pooled_w, int64_t grain, scalar_t* out) {
  const int64_t bins = static_cast<int64_t>(pooled_h) * pooled_w;
  int max_gh = 0;
  for (int64_t k = 0; k < K; ++k) max_gh = std::max(max_gh, t.grid_h[k]);
  at::parallel_for(0, C, grain, [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> rows(static_cast<size_t>(std::max(max_gh, 1)) * W);
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t k = 0; k < K; ++k) {
        scalar_t* o = out + (k * C + c) * bins;
        const int64_t x0 = t.xmin[k], span = t.xmax[k] - t.xmin[k] + 1;
        if (span <= 0) {  // no valid column tap: every bin is 0
          std::fill(o, o + bins, static_cast<scalar_t>(0));
          continue;
        }
        const scalar_t* plane = input + (t.batch[k] * C + c) * H * W;
        const int gh = t.grid_h[k], gw = t.grid_w[k];
        const acc_t inv = t.inv_count[k];
        for (int ph = 0; ph < pooled_h; ++ph) {
          const AxisTap<acc_t>* ty = t.y.data() + t.ybeg[k] + ph * gh;
          for (int iy = 0; iy < gh; ++iy) {
            acc_t* r = rows.data() + static_cast<int64_t>(iy) * W;
            const scalar_t* rl = plane + ty[iy].low * W + x0;
            const scalar_t* rh = plane + ty[iy].high * W + x0;
            const acc_t wl = ty[iy].w_low, wh = ty[iy].w_high;
            for (int64_t j = 0; j < span; ++j) r[j] = wl * static_cast<acc_t>(rl[j]) + wh * static_cast<acc_t>(rh[j]);
          }
          for (int pw = 0; pw < pooled_w; ++pw) {
            const AxisTap<acc_t>* tx = t.x.data() + t.xbeg[k] + pw * gw;
            acc_t sum = 0;
            for (int iy = 0; iy < gh; ++iy) {
              const acc_t* r = rows.data() + static_cast<int64_t>(iy) * W - x0;
              for (int ix = 0; ix < gw; ++ix) {
                // An invalid tap has zero weights at column 0, which may lie outside the span.
                if (tx[ix].w_low == acc_t(0) && tx[ix].w_high == acc_t(0)) continue;
                sum += tx[ix].w_low * r[tx[ix].low] + tx[ix].w_high * r[tx[ix].high];
              }
            }
            o[ph * pooled_w + pw] = static_cast<scalar_t>(sum * inv);
          }
        }
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_nchw(const scalar_t* grad, const TapTables<acc_t>& t, int64_t K, int64_t C, int H, int W,
                   int pooled_h, int pooled_w, int64_t grain, acc_t* grad_input) {
  const int64_t bins = static_cast<int64_t>(pooled_h) * pooled_w;
  at::parallel_for(0, C, grain, [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> cols(static_cast<size_t>(W));
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t x0 = t.xmin[k], span = t.xmax[k] - t.xmin[k] + 1;
        if (span <= 0) continue;
        acc_t* plane = grad_input + (t.batch[k] * C + c) * H * W;
        const int gh = t.grid_h[k], gw = t.grid_w[k];
        const scalar_t* go = grad + (k * C + c) * bins;
        const acc_t inv = t.inv_count[k];
        for (int ph = 0; ph < pooled_h; ++ph) {
          // cols[j]: gradient reaching column x0 + j from bin row ph, before the row weights.
          acc_t* u = cols.data() - x0;
          std::fill(cols.begin(), cols.begin() + span, acc_t(0));
          for (int pw = 0; pw < pooled_w; ++pw) {
            const AxisTap<acc_t>* tx = t.x.data() + t.xbeg[k] + pw * gw;
            const acc_t v = static_cast<acc_t>(go[ph * pooled_w + pw]) * inv;
            for (int ix = 0; ix < gw; ++ix) {
              if (tx[ix].w_low == acc_t(0) && tx[ix].w_high == acc_t(0)) continue;
              u[tx[ix].low] += tx[ix].w_low * v;
              u[tx[ix].high] += tx[ix].w_high * v;
            }
          }
          const AxisTap<acc_t>* ty = t.y.data() + t.ybeg[k] + ph * gh;
          for (int iy = 0; iy < gh; ++iy) {
            const acc_t wl = ty[iy].w_low, wh = ty[iy].w_high;
            if (wl == acc_t(0) && wh == acc_t(0)) continue;
            acc_t* rl = plane + ty[iy].low * W + x0;
            acc_t* rh = plane + ty[iy].high * W + x0;
            for (int64_t j = 0; j < span; ++j) rl[j] += wl * cols[j];
            for (int64_t j = 0; j < span; ++j) rh[j] += wh * cols[j];
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------ channels_last
template <typename scalar_t, typename acc_t>
void forward_nhwc(const scalar_t* input, const TapTables<acc_t>& t, int64_t K, int64_t C, int H, int W,
                  int pooled_h, int pooled_w, int64_t grain, scalar_t* out) {
  at::parallel_for(0, K, grain, [&](int64_t k0, int64_t k1) {
    std::vector<acc_t> acc(C);
    for (int64_t k = k0; k < k1; ++k) {
      const scalar_t* image = input + t.batch[k] * H * W * C;
      const int gh = t.grid_h[k], gw = t.grid_w[k];
      for (int ph = 0; ph < pooled_h; ++ph) {
        const AxisTap<acc_t>* ty = t.y.data() + t.ybeg[k] + ph * gh;
        for (int pw = 0; pw < pooled_w; ++pw) {
          const AxisTap<acc_t>* tx = t.x.data() + t.xbeg[k] + pw * gw;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          acc_t* a = acc.data();
          for (int iy = 0; iy < gh; ++iy) {
            for (int ix = 0; ix < gw; ++ix) {
              const int64_t ys[2] = {ty[iy].low, ty[iy].high};
              const int64_t xs[2] = {tx[ix].low, tx[ix].high};
              const acc_t wy[2] = {ty[iy].w_low, ty[iy].w_high};
              const acc_t wx[2] = {tx[ix].w_low, tx[ix].w_high};
              for (int q = 0; q < 4; ++q) {
                const acc_t w = wy[q >> 1] * wx[q & 1];
                if (w == acc_t(0)) continue;
                const scalar_t* px = image + (ys[q >> 1] * W + xs[q & 1]) * C;
                for (int64_t c = 0; c < C; ++c) a[c] += w * static_cast<acc_t>(px[c]);
              }
            }
          }
          scalar_t* o = out + ((k * pooled_h + ph) * pooled_w + pw) * C;  // [K, ph, pw, C]
          const acc_t inv = t.inv_count[k];
          for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(a[c] * inv);
        }
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_nhwc(const scalar_t* grad, const TapTables<acc_t>& t, int64_t K, int64_t C, int H, int W,
                   int pooled_h, int pooled_w, int64_t grain, acc_t* grad_input) {
  at::parallel_for(0, C, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t k = 0; k < K; ++k) {
      acc_t* image = grad_input + t.batch[k] * H * W * C;
      const int gh = t.grid_h[k], gw = t.grid_w[k];
      for (int ph = 0; ph < pooled_h; ++ph) {
        const AxisTap<acc_t>* ty = t.y.data() + t.ybeg[k] + ph * gh;
        for (int pw = 0; pw < pooled_w; ++pw) {
          const AxisTap<acc_t>* tx = t.x.data() + t.xbeg[k] + pw * gw;
          const scalar_t* go = grad + ((k * pooled_h + ph) * pooled_w + pw) * C;
          for (int iy = 0; iy < gh; ++iy) {
            for (int ix = 0; ix < gw; ++ix) {
              const int64_t ys[2] = {ty[iy].low, ty[iy].high};
              const int64_t xs[2] = {tx[ix].low, tx[ix].high};
              const acc_t wy[2] = {ty[iy].w_low, ty[iy].w_high};
              const acc_t wx[2] = {tx[ix].w_low, tx[ix].w_high};
              for (int q = 0; q < 4; ++q) {
                const acc_t w = wy[q >> 1] * wx[q & 1] * t.inv_count[k];
                if (w == acc_t(0)) continue;
                acc_t* px = image + (ys[q >> 1] * W + xs[q & 1]) * C;
                for (int64_t c = c0; c < c1; ++c) px[c] += w * static_cast<acc_t>(go[c]);
              }
            }
          }
        }
      }
    }
  });
}

// Channels per thread chunk: all of them (one thread) for small problems.
int64_t channel_grain(int64_t C, int64_t work) {
  if (work < kMinParallelWork) return std::max<int64_t>(C, 1);
  return std::max<int64_t>(1, C / std::max(1, at::get_num_threads()));
}

}  // namespace

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.device().is_cpu() && rois.device().is_cpu(), "roi_align_forward_cpu: tensors must be on the CPU");
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
    const auto tables = build_tables<acc_t>(r.data_ptr<acc_t>(), K, N, static_cast<int>(H), static_cast<int>(W),
                                            static_cast<int>(pooled_h), static_cast<int>(pooled_w),
                                            static_cast<acc_t>(spatial_scale), static_cast<int>(sampling_ratio), aligned);
    const int64_t work = total_taps(tables, static_cast<int>(pooled_h), static_cast<int>(pooled_w)) * C;
    if (nhwc) {
      const int64_t grain = work < kMinParallelWork ? K : 1;
      forward_nhwc<scalar_t, acc_t>(x.data_ptr<scalar_t>(), tables, K, C, static_cast<int>(H), static_cast<int>(W),
                                    static_cast<int>(pooled_h), static_cast<int>(pooled_w), grain,
                                    out.data_ptr<scalar_t>());
    } else {
      forward_nchw<scalar_t, acc_t>(x.data_ptr<scalar_t>(), tables, K, C, static_cast<int>(H), static_cast<int>(W),
                                    static_cast<int>(pooled_h), static_cast<int>(pooled_w), channel_grain(C, work),
                                    out.data_ptr<scalar_t>());
    }
  });
  return out;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t batch, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                  bool channels_last) {
  TORCH_CHECK(grad.device().is_cpu() && rois.device().is_cpu(), "roi_align_backward_cpu: tensors must be on the CPU");
  const int64_t K = rois.size(0);
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
    const auto tables = build_tables<acc_t>(r.data_ptr<acc_t>(), K, batch, static_cast<int>(height),
                                            static_cast<int>(width), static_cast<int>(pooled_h),
                                            static_cast<int>(pooled_w), static_cast<acc_t>(spatial_scale),
                                            static_cast<int>(sampling_ratio), aligned);
    const int64_t grain =
        channel_grain(channels, total_taps(tables, static_cast<int>(pooled_h), static_cast<int>(pooled_w)) * channels);
    // Reduced precision accumulates in a float buffer, converted once at the end.
    at::Tensor buf = grad.scalar_type() == acc_type ? grad_input : grad_input.to(acc_type);
    if (nhwc) {
      backward_nhwc<scalar_t, acc_t>(go.data_ptr<scalar_t>(), tables, K, channels, static_cast<int>(height),
                                     static_cast<int>(width), static_cast<int>(pooled_h), static_cast<int>(pooled_w),
                                     grain, buf.data_ptr<acc_t>());
    } else {
      backward_nchw<scalar_t, acc_t>(go.data_ptr<scalar_t>(), tables, K, channels, static_cast<int>(height),
                                     static_cast<int>(width), static_cast<int>(pooled_h), static_cast<int>(pooled_w),
                                     grain, buf.data_ptr<acc_t>());
    }
    if (!buf.is_same(grad_input)) grad_input.copy_(buf);
  });
  return grad_input;
}

}  // namespace maskrcnn
