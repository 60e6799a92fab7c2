// Walks the rows of a row-major matrix with either a warp or a whole block per row, and reduces
// within that group. Used by the softmax and cross-entropy families, whose rows are independent.
#pragma once
#include "common.cuh"

template <bool WARP> struct RowWalker;

// A warp per row: blockDim.x / 32 rows per block, no __syncthreads (warps advance independently).
template <> struct RowWalker<true> {
    __device__ int64_t first_row() const { return (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); }
    __device__ int64_t row_stride() const { return (int64_t)gridDim.x * (blockDim.x >> 5); }
    __device__ int lane() const { return threadIdx.x & 31; }
    __device__ int width() const { return 32; }
    __device__ float sum(float v, float*) const { return warp_sum(v); }
    __device__ float max(float v, float*) const { return warp_max(v); }
};

// A block per row: the row loop is block-uniform, so block-wide barriers are safe.
template <> struct RowWalker<false> {
    __device__ int64_t first_row() const { return blockIdx.x; }
    __device__ int64_t row_stride() const { return gridDim.x; }
    __device__ int lane() const { return threadIdx.x; }
    __device__ int width() const { return blockDim.x; }
    __device__ float sum(float v, float* scratch) const { return block_sum(v, scratch); }
    __device__ float max(float v, float* scratch) const { return block_max(v, scratch); }
};
