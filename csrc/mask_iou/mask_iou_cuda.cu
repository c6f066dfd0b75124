// Crop-mask intersections on CUDA.
//
// 1. extent_kernel: a block per mask finds the tight box of its nonzero pixels (image coords).
// 2. overlap_kernel + nonzero: the compacted list of pairs whose tight boxes overlap.
// 3. count_kernel: a warp per listed pair counts the pixels set in both masks over the overlap
//    and writes its entry; every other entry stays 0. Pairs are unique: no atomics.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>

#include "mask_iou.h"

namespace maskrcnn {
namespace {

constexpr int kExtentThreads = 128;
constexpr int kWarpsPerBlock = 8;

// boxes[i] = (x0, y0, x1, y1) of mask i's nonzero pixels in image pixels; (0, 0, 0, 0) when empty.
__global__ void extent_kernel(const uint8_t* __restrict__ crops, const int64_t* __restrict__ origins, int h, int w,
                              int64_t* __restrict__ boxes) {
  __shared__ int s[4];
  const int64_t i = blockIdx.x;
  if (threadIdx.x == 0) s[0] = INT_MAX, s[1] = INT_MAX, s[2] = -1, s[3] = -1;
  __syncthreads();
  int r0 = INT_MAX, c0 = INT_MAX, r1 = -1, c1 = -1;
  const uint8_t* m = crops + i * h * w;
  for (int p = threadIdx.x; p < h * w; p += blockDim.x) {
    if (m[p]) {
      const int r = p / w, c = p % w;
      r0 = min(r0, r), r1 = max(r1, r), c0 = min(c0, c), c1 = max(c1, c);
    }
  }
  if (r1 >= 0) {
    atomicMin(&s[0], r0), atomicMin(&s[1], c0), atomicMax(&s[2], r1), atomicMax(&s[3], c1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t* b = boxes + i * 4;
    if (s[2] < 0) {
      b[0] = b[1] = b[2] = b[3] = 0;
    } else {
      b[0] = origins[2 * i] + s[1], b[1] = origins[2 * i + 1] + s[0];
      b[2] = origins[2 * i] + s[3] + 1, b[3] = origins[2 * i + 1] + s[2] + 1;
    }
  }
}

__global__ void overlap_kernel(const int64_t* __restrict__ a, const int64_t* __restrict__ b, int64_t N, int64_t M,
                               bool* __restrict__ flags) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= N * M) return;
  const int64_t* p = a + (idx / M) * 4;
  const int64_t* q = b + (idx % M) * 4;
  flags[idx] = max(p[0], q[0]) < min(p[2], q[2]) && max(p[1], q[1]) < min(p[3], q[3]);
}

__global__ void count_kernel(const int64_t* __restrict__ pairs, int64_t P, int64_t M, const uint8_t* __restrict__ a,
                             const int64_t* __restrict__ a_org, const int64_t* __restrict__ a_box, int ah, int aw,
                             const uint8_t* __restrict__ b, const int64_t* __restrict__ b_org,
                             const int64_t* __restrict__ b_box, int bh, int bw, int64_t* __restrict__ out) {
  const int64_t pair = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (pair >= P) return;  // whole warps leave together
  const int64_t flat = pairs[pair];
  const int64_t i = flat / M, j = flat % M;
  const int64_t* pa = a_box + i * 4;
  const int64_t* pb = b_box + j * 4;
  const int64_t x0 = max(pa[0], pb[0]), y0 = max(pa[1], pb[1]);
  const int ow = static_cast<int>(min(pa[2], pb[2]) - x0), oh = static_cast<int>(min(pa[3], pb[3]) - y0);
  // Offsets of the overlap's top-left pixel inside each crop.
  const uint8_t* ma = a + i * ah * aw + (y0 - a_org[2 * i + 1]) * aw + (x0 - a_org[2 * i]);
  const uint8_t* mb = b + j * bh * bw + (y0 - b_org[2 * j + 1]) * bw + (x0 - b_org[2 * j]);
  int count = 0;
  for (int p = lane; p < oh * ow; p += 32) {
    const int r = p / ow, c = p % ow;
    count += (ma[r * aw + c] != 0) & (mb[r * bw + c] != 0);
  }
  for (int off = 16; off > 0; off >>= 1) count += __shfl_down_sync(0xffffffffu, count, off);
  if (lane == 0) out[flat] = count;
}

at::Tensor extents(const at::Tensor& crops, const at::Tensor& origins, cudaStream_t stream) {
  const int64_t n = crops.size(0);
  at::Tensor boxes = at::empty({n, 4}, origins.options());
  if (n == 0) return boxes;
  extent_kernel<<<static_cast<unsigned>(n), kExtentThreads, 0, stream>>>(
      crops.data_ptr<uint8_t>(), origins.data_ptr<int64_t>(), static_cast<int>(crops.size(1)),
      static_cast<int>(crops.size(2)), boxes.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return boxes;
}

}  // namespace

at::Tensor crop_mask_intersection_cuda(const at::Tensor& a_crops, const at::Tensor& a_origins,
                                       const at::Tensor& b_crops, const at::Tensor& b_origins) {
  check_crop_inputs(a_crops, a_origins, "a");
  check_crop_inputs(b_crops, b_origins, "b");
  TORCH_CHECK(a_crops.is_cuda() && a_crops.device() == b_crops.device(),
              "crop_mask_intersection_cuda: all tensors must be on one CUDA device, got ", a_crops.device(), " and ",
              b_crops.device());
  c10::cuda::CUDAGuard guard(a_crops.device());
  const int64_t N = a_crops.size(0), M = b_crops.size(0);
  at::Tensor out = at::zeros({N, M}, a_origins.options());
  if (N == 0 || M == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor a = a_crops.contiguous().view(at::kByte), b = b_crops.contiguous().view(at::kByte);
  const at::Tensor ao = a_origins.contiguous(), bo = b_origins.contiguous();
  const at::Tensor abox = extents(a, ao, stream), bbox = extents(b, bo, stream);
  at::Tensor flags = at::empty({N * M}, a.options().dtype(at::kBool));
  overlap_kernel<<<static_cast<unsigned>((N * M + 255) / 256), 256, 0, stream>>>(
      abox.data_ptr<int64_t>(), bbox.data_ptr<int64_t>(), N, M, flags.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor pairs = flags.nonzero().view({-1}).contiguous();  // syncs for the count
  const int64_t P = pairs.size(0);
  if (P == 0) return out;
  count_kernel<<<static_cast<unsigned>((P + kWarpsPerBlock - 1) / kWarpsPerBlock), kWarpsPerBlock * 32, 0, stream>>>(
      pairs.data_ptr<int64_t>(), P, M, a.data_ptr<uint8_t>(), ao.data_ptr<int64_t>(), abox.data_ptr<int64_t>(),
      static_cast<int>(a.size(1)), static_cast<int>(a.size(2)), b.data_ptr<uint8_t>(), bo.data_ptr<int64_t>(),
      bbox.data_ptr<int64_t>(), static_cast<int>(b.size(1)), static_cast<int>(b.size(2)), out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace maskrcnn
