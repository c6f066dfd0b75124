// Pixel counts of pairwise intersections of crop masks of one image (see maskrcnn/ops/masks.py).
#pragma once
#include <ATen/core/Tensor.h>

namespace maskrcnn {

void check_crop_inputs(const at::Tensor& crops, const at::Tensor& origins, const char* name);
at::Tensor crop_mask_intersection_cpu(const at::Tensor& a_crops, const at::Tensor& a_origins,
                                      const at::Tensor& b_crops, const at::Tensor& b_origins);
#ifdef WITH_CUDA
at::Tensor crop_mask_intersection_cuda(const at::Tensor& a_crops, const at::Tensor& a_origins,
                                       const at::Tensor& b_crops, const at::Tensor& b_origins);
#endif

}  // namespace maskrcnn
