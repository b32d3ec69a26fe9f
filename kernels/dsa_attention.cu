// Dynamic Sparse Attention, forward: block-sparse FlashAttention-2-style attention.
//
// One thread block (CTA) computes ROWS query rows of one query block of BLOCK tokens (ROWS =
// BLOCK, or 64 for blocks of 128: two CTAs per block) for one (batch, head): ROWS / 16 warps, 16
// query rows each. It walks the key blocks its query block keeps (a row of
// `kv_indices`, `kv_counts` long, ascending), 64 keys per tile, with an online softmax in fp32
// and tensor-core products (mma.sync m16n8k16, bf16 in, fp32 accumulate). K/V tiles are double
// buffered through cp.async, so the next tile loads while this one is multiplied.
//
// Layout: q [B, Lq, H, D], k and v [B, Lk, H, D], out [B, Lq, H, D], bf16, last dim contiguous,
// every other stride (in elements) a multiple of 8 and the pointers 16-byte aligned (one cp.async
// moves 8 bf16). kv_counts [B*H*nq] int32; kv_indices [B*H*nq, nk] int32, row r's kept key
// blocks in its first kv_counts[r] entries, ascending (rows of a [B, H, nq, nk] mask, flattened).
// A row keeping no block writes zeros.
//
// Compiled at run time by NVRTC through CuPy (streamedit_core/dsa_kernel.py), so no headers: bf16
// values are moved as raw 16-bit words and converted with PTX.

namespace dsa {

constexpr int TILE_N = 64;  // keys per tile

typedef unsigned int u32;
typedef unsigned short u16;
struct __align__(16) u32x4 { u32 x, y, z, w; };  // one 16-byte chunk (8 bf16)

// The PTX primitives: the only hardware-specific code. tests/dsa_emulator.cpp defines
// DSA_HOST_EMULATION and substitutes CPU versions of exactly these, built from the PTX ISA's
// fragment layouts, to run this kernel on a CPU in the test suite.
#ifndef DSA_HOST_EMULATION
__device__ __forceinline__ u32 smem_addr(const void* p) {
  return static_cast<u32>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; `bytes` = 0 writes zeros (rows past the sequence end).
__device__ __forceinline__ void cp_async_16(u32 dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// c[16x8] += a[16x16] * b[16x8]; a row-major, b column-major, fragments as PTX defines them.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> packed bf16x2, `lo` in the low half (cvt puts its first source in the high half).
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
#endif  // DSA_HOST_EMULATION

// Shared-memory tiles are [rows][D] bf16 in 16-byte chunks; chunk c of row r sits at c ^ (r & 7),
// so the 8 rows an ldmatrix reads at one column land in 8 different bank groups.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return (row * (D / 8) + (chunk ^ (row & 7))) * 16;  // byte offset
}

// rows x D tile from global (row i at base + i * row_stride), zeros past `valid_rows`.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(char* smem, const u16* base, long long row_stride,
                                          int valid_rows) {
  constexpr int CHUNKS = D / 8;
  static_assert((ROWS * CHUNKS) % THREADS == 0, "tile chunks must split evenly over threads");
  const u32 s = smem_addr(smem);
#pragma unroll
  for (int i = 0; i < ROWS * CHUNKS / THREADS; ++i) {
    const int idx = threadIdx.x + i * THREADS;
    const int row = idx / CHUNKS, chunk = idx % CHUNKS;
    const bool ok = row < valid_rows;
    const u16* src = base + (ok ? row * row_stride : 0) + chunk * 8;
    cp_async_16(s + swz<D>(row, chunk), src, ok ? 16 : 0);
  }
}

template <int D, int BLOCK, int ROWS>
__global__ void __launch_bounds__(ROWS * 2, 1)
dsa_fwd(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
        u16* __restrict__ out, const int* __restrict__ kv_counts, const int* __restrict__ kv_indices,
        int Lq, int Lk, int H, int nq, int nk,
        long long q_sb, long long q_st, long long q_sh,
        long long k_sb, long long k_st, long long k_sh,
        long long v_sb, long long v_st, long long v_sh,
        long long o_sb, long long o_st, long long o_sh,
        float scale_log2) {
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static_assert(BLOCK == 64 || BLOCK == 128, "block size 64 or 128");
  static_assert((ROWS == 64 || ROWS == 128) && BLOCK % ROWS == 0, "64 or 128 rows, within a block");
  constexpr int THREADS = ROWS * 2;  // ROWS / 16 warps
  constexpr int SUB = BLOCK / TILE_N;  // key tiles per key block
  constexpr int TILE_BYTES = TILE_N * D * 2;
  constexpr int KC = D / 16;  // 16-wide chunks of the head dim (k of Q K^T)
  constexpr int DN = D / 8;   // 8-wide n-tiles of the output

#ifdef DSA_HOST_EMULATION
  char* smem = emulated_shared_memory();
#else
  extern __shared__ __align__(128) char smem[];
#endif
  char* q_s = smem;                     // [ROWS][D], later the output tile
  char* k_s = smem + ROWS * D * 2;      // [2][TILE_N][D]
  char* v_s = k_s + 2 * TILE_BYTES;     // [2][TILE_N][D]

  const int qb = blockIdx.x / (BLOCK / ROWS), h = blockIdx.y, b = blockIdx.z;  // query block
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_id = (b * H + h) * nq + qb;
  const int* blocks = kv_indices + (long long)row_id * nk;
  const int count = kv_counts[row_id];
  // Tiles to visit: SUB per kept block, less those of the last key block lying past Lk (only
  // the final block can be partial, and it comes last in an ascending row). The host passes
  // nk = ceil(Lk / BLOCK), so the last block holds at least one key.
  int n_tiles = count * SUB;
  if (count > 0 && blocks[count - 1] == nk - 1) {
    const int last_keys = Lk - (nk - 1) * BLOCK;
    n_tiles -= SUB - (last_keys + TILE_N - 1) / TILE_N;
  }

  const int q0 = qb * BLOCK + (blockIdx.x % (BLOCK / ROWS)) * ROWS;  // first query row
  if (q0 >= Lq) return;  // the second half of a partial last block (the whole CTA leaves)
  const u16* q_base = q + b * q_sb + q0 * q_st + h * q_sh;
  const u16* k_base = k + b * k_sb + h * k_sh;
  const u16* v_base = v + b * v_sb + h * v_sh;

  auto tile_key0 = [&](int t) { return blocks[t / SUB] * BLOCK + (t % SUB) * TILE_N; };
  auto load_kv = [&](int t, int buf) {
    const int key0 = tile_key0(t);
    load_tile<D, TILE_N, THREADS>(k_s + buf * TILE_BYTES, k_base + key0 * k_st, k_st, Lk - key0);
    load_tile<D, TILE_N, THREADS>(v_s + buf * TILE_BYTES, v_base + key0 * v_st, v_st, Lk - key0);
  };

  load_tile<D, ROWS, THREADS>(q_s, q_base, q_st, Lq - q0);
  if (n_tiles > 0) load_kv(0, 0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  // This warp's 16 query rows as A fragments, kept in registers for the whole key loop.
  u32 qf[KC][4];
  {
    const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc)
      ldmatrix_x4(qf[kc], smem_addr(q_s) + swz<D>(r, kc * 2 + (lane >> 4)));
  }

  // Accumulator fragments: thread holds rows g = lane / 4 and g + 8 of the warp's 16, columns
  // 2 * (lane % 4) + {0, 1} of each 8-wide n-tile: c[0], c[1] on row g, c[2], c[3] on row g + 8.
  float o[DN][4];
#pragma unroll
  for (int n = 0; n < DN; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {neg_inf(), neg_inf()};  // running max (log2 units) of rows g, g + 8
  float l[2] = {0.f, 0.f};              // running sum of this thread's columns

  for (int t = 0; t < n_tiles; ++t) {
    cp_async_wait_all();
    __syncthreads();  // tile t is in; every warp is done with the buffer the next load overwrites
    if (t + 1 < n_tiles) load_kv(t + 1, (t + 1) & 1);
    cp_async_commit();
    const u32 kt = smem_addr(k_s + (t & 1) * TILE_BYTES);
    const u32 vt = smem_addr(v_s + (t & 1) * TILE_BYTES);

    // S = Q K^T: [16 x 64] per warp, 8 n-tiles of 8 keys.
    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {  // 16 keys: n-tiles 2 np and 2 np + 1
        u32 r[4];
        const int key = np * 16 + (lane & 7) + ((lane >> 4) & 1) * 8;
        ldmatrix_x4(r, kt + swz<D>(key, kc * 2 + ((lane >> 3) & 1)));
        mma_bf16(s[2 * np], qf[kc], r[0], r[1]);
        mma_bf16(s[2 * np + 1], qf[kc], r[2], r[3]);
      }
    }
    const int key0 = tile_key0(t);
    if (key0 + TILE_N > Lk) {  // keys past the end of the sequence
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (key0 + n * 8 + (lane & 3) * 2 + (e & 1) >= Lk) s[n][e] = neg_inf();
    }

    // Online softmax, per row half i (registers 2 i, 2 i + 1); a row's 4 threads are lanes of a quad.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = neg_inf();
#pragma unroll
      for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * i], s[n][2 * i + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
      const float m_new = fmaxf(m[i], mx * scale_log2);
      const float m_use = m_new == neg_inf() ? 0.f : m_new;  // a row with no key yet
      const float alpha = fast_exp2(m[i] - m_use);
      m[i] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 2 * i; e < 2 * i + 2; ++e) {
          const float p = fast_exp2(s[n][e] * scale_log2 - m_use);
          s[n][e] = p;
          sum += p;
        }
      l[i] = l[i] * alpha + sum;
#pragma unroll
      for (int n = 0; n < DN; ++n) {
        o[n][2 * i] *= alpha;
        o[n][2 * i + 1] *= alpha;
      }
    }

    // O += P V. P's accumulator layout is the A fragment layout of the next product: keys
    // 16 kk .. 16 kk + 15 are n-tiles 2 kk (low 8) and 2 kk + 1 (high 8).
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const u32 pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                         pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                         pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {  // 16 output columns: n-tiles 2 dp and 2 dp + 1
        u32 r[4];
        const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        ldmatrix_x4_trans(r, vt + swz<D>(key, dp * 2 + ((lane >> 4) & 1)));
        mma_bf16(o[2 * dp], pa, r[0], r[1]);
        mma_bf16(o[2 * dp + 1], pa, r[2], r[3]);
      }
    }
  }

  // Normalise, stage the warp's rows in shared memory (its own rows of the Q tile: no other
  // warp reads them), then write 16-byte chunks to global memory.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffff, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffff, l[i], 2);
    l[i] = l[i] > 0.f ? 1.f / l[i] : 0.f;
  }
  const int g = lane >> 2;
#pragma unroll
  for (int n = 0; n < DN; ++n)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = warp * 16 + g + 8 * i;
      const int byte = swz<D>(row, n) + (lane & 3) * 4;
      *reinterpret_cast<u32*>(q_s + byte) = pack_bf16(o[n][2 * i] * l[i], o[n][2 * i + 1] * l[i]);
    }
  __syncthreads();
  constexpr int CHUNKS = D / 8;
  u16* o_base = out + b * o_sb + q0 * o_st + h * o_sh;
#pragma unroll
  for (int i = 0; i < ROWS * CHUNKS / THREADS; ++i) {
    const int idx = threadIdx.x + i * THREADS;
    const int row = idx / CHUNKS, chunk = idx % CHUNKS;
    if (q0 + row < Lq)
      *reinterpret_cast<u32x4*>(o_base + row * o_st + chunk * 8) =
          *reinterpret_cast<const u32x4*>(q_s + swz<D>(row, chunk));
  }
}

}  // namespace dsa
