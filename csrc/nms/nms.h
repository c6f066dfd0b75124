// Greedy non-maximum suppression, by box IoU (nms) or on a precomputed IoU matrix (greedy_suppress).
#pragma once
#include <ATen/core/Tensor.h>

namespace maskrcnn {

void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores);
at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
at::Tensor greedy_suppress_cpu(const at::Tensor& iou_sorted, double iou_threshold);
#ifdef WITH_CUDA
at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
at::Tensor greedy_suppress_cuda(const at::Tensor& iou_sorted, double iou_threshold);
#endif

}  // namespace maskrcnn
