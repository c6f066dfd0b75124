// Sample geometry shared by the CPU and CUDA kernels, so that both compute the same function.
#pragma once
#include <ATen/core/Tensor.h>

#ifdef __CUDACC__
#define MRCNN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MRCNN_HOST_DEVICE inline
#endif

namespace maskrcnn {

// One RoI in feature-map coordinates, and its sampling grid.
template <typename acc_t>
struct RoIGeometry {
  int64_t batch;
  acc_t start_h, start_w, bin_h, bin_w;
  int grid_h, grid_w;
  acc_t count;  // samples per bin, at least 1 (an empty grid averages to 0)
};

template <typename acc_t>
MRCNN_HOST_DEVICE RoIGeometry<acc_t> roi_geometry(const acc_t* roi, acc_t spatial_scale, int pooled_h,
                                                  int pooled_w, int sampling_ratio, bool aligned) {
  RoIGeometry<acc_t> g;
  g.batch = static_cast<int64_t>(roi[0]);
  // aligned: shift by half a pixel so that feature pixel i is sampled at its centre.
  const acc_t offset = aligned ? acc_t(0.5) : acc_t(0);
  g.start_w = roi[1] * spatial_scale - offset;
  g.start_h = roi[2] * spatial_scale - offset;
  const acc_t end_w = roi[3] * spatial_scale - offset;
  const acc_t end_h = roi[4] * spatial_scale - offset;
  acc_t roi_w = end_w - g.start_w;
  acc_t roi_h = end_h - g.start_h;
  if (!aligned) {  // Detectron's original behaviour: boxes are at least one pixel
    roi_w = roi_w > acc_t(1) ? roi_w : acc_t(1);
    roi_h = roi_h > acc_t(1) ? roi_h : acc_t(1);
  }
  g.bin_h = roi_h / static_cast<acc_t>(pooled_h);
  g.bin_w = roi_w / static_cast<acc_t>(pooled_w);
  // Adaptive grid: ceil(roi / pooled); a non-positive size gives an empty grid (output 0).
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(roi_h / static_cast<acc_t>(pooled_h)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(roi_w / static_cast<acc_t>(pooled_w)));
  if (g.grid_h < 0) g.grid_h = 0;
  if (g.grid_w < 0) g.grid_w = 0;
  const int count = g.grid_h * g.grid_w;
  g.count = static_cast<acc_t>(count > 1 ? count : 1);
  return g;
}

// Sample position along one axis: sample `i` of bin `p`.
template <typename acc_t>
MRCNN_HOST_DEVICE acc_t sample_coord(acc_t start, acc_t bin, int p, int i, int grid) {
  return start + static_cast<acc_t>(p) * bin + (static_cast<acc_t>(i) + acc_t(0.5)) * bin / static_cast<acc_t>(grid);
}

// Bilinear interpolation along one axis. A sample beyond one pixel outside [0, size - 1]
// contributes nothing (valid = false); otherwise it is clamped, so the border repeats.
template <typename acc_t>
struct AxisWeights {
  int low, high;
  acc_t w_low, w_high;
  bool valid;
};

template <typename acc_t>
MRCNN_HOST_DEVICE AxisWeights<acc_t> axis_weights(acc_t v, int size) {
  AxisWeights<acc_t> a;
  if (v < acc_t(-1) || v > static_cast<acc_t>(size)) {
    a.low = a.high = 0;
    a.w_low = a.w_high = acc_t(0);
    a.valid = false;
    return a;
  }
  if (v <= acc_t(0)) v = acc_t(0);
  a.low = static_cast<int>(v);
  if (a.low >= size - 1) {
    a.low = a.high = size - 1;
    v = static_cast<acc_t>(a.low);
  } else {
    a.high = a.low + 1;
  }
  const acc_t l = v - static_cast<acc_t>(a.low);
  a.w_high = l;
  a.w_low = acc_t(1) - l;
  a.valid = true;
  return a;
}

}  // namespace maskrcnn
