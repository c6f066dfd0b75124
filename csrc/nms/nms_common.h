// Box IoU with exactly the rounding of maskrcnn.structures.box_iou (each operation rounded on
// its own, no fused multiply-add), so that a box at the threshold is decided the same way by the
// compiled kernels and the pure-PyTorch twin.
#pragma once
#include <ATen/core/Tensor.h>

#ifdef __CUDACC__
#define MRCNN_NMS_HD __host__ __device__ __forceinline__
#else
#define MRCNN_NMS_HD inline
#endif

namespace maskrcnn {

#ifdef __CUDACC__
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
#define MRCNN_MUL(a, b) mul_rn(a, b)
#define MRCNN_ADD(a, b) add_rn(a, b)
#else
#define MRCNN_MUL(a, b) ((a) * (b))
#define MRCNN_ADD(a, b) ((a) + (b))
#endif

template <typename T>
MRCNN_NMS_HD T box_area(const T* b) {
  const T w = b[2] - b[0], h = b[3] - b[1];
  return MRCNN_MUL(w > T(0) ? w : T(0), h > T(0) ? h : T(0));
}

// IoU of boxes a and b (xyxy) given their areas; 0 when the union is empty.
template <typename T>
MRCNN_NMS_HD T box_iou(const T* a, const T* b, T area_a, T area_b) {
  const T l = a[0] > b[0] ? a[0] : b[0], t = a[1] > b[1] ? a[1] : b[1];
  const T r = a[2] < b[2] ? a[2] : b[2], btm = a[3] < b[3] ? a[3] : b[3];
  const T w = r - l, h = btm - t;
  const T inter = MRCNN_MUL(w > T(0) ? w : T(0), h > T(0) ? h : T(0));
  const T uni = MRCNN_ADD(area_a, area_b) - inter;
  const T eps = T(1e-12);
  return uni > T(0) ? inter / (uni > eps ? uni : eps) : T(0);
}

}  // namespace maskrcnn
