// Runs kernels/dsa_attention.cu on a CPU: one std::thread per CUDA thread, a barrier for
// __syncthreads, and CPU versions of the kernel's PTX primitives (cp.async, ldmatrix, mma.sync,
// shfl) written from the PTX ISA's definitions of their fragment layouts, each warp-collective
// one an exchange between the warp's 32 threads. It checks the kernel's own index math (which
// lane loads which row, which register holds which element), its pipeline (cp.async data lands
// only at the wait) and its bounds (build with -fsanitize=address: shared memory is a heap block
// of exactly the launch's size), against attention computed in double on the same bf16 inputs.
//
// usage: dsa_emulator D BLOCK ROWS B H Lq Lk MASK SEED, MASK one of random, full, diagonal, empty_row
// prints "max_abs_err <x> tiles <n>"; exits 1 on a bad argument.
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#define DSA_HOST_EMULATION
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct Dim3 { int x = 0, y = 0, z = 0; };
thread_local Dim3 threadIdx, blockIdx;

namespace emu {
constexpr int MAX_WARPS = 8;
char* shared = nullptr;                      // this CTA's shared memory
std::unique_ptr<std::barrier<>> cta_barrier;
std::unique_ptr<std::barrier<>> warp_barrier[MAX_WARPS];
struct Exchange { unsigned addr[32]; unsigned a[32][4]; unsigned b[32][2]; float f[32]; };
Exchange exchange[MAX_WARPS];
struct Pending { unsigned dst; unsigned char bytes[16]; };
thread_local std::vector<Pending> pending;   // this thread's cp.async copies not yet waited for
long long mma_calls = 0;

int warp() { return threadIdx.x / 32; }
int lane() { return threadIdx.x % 32; }
void warp_sync() { warp_barrier[warp()]->arrive_and_wait(); }

unsigned short to_bf16(float x) {  // round to nearest even
  unsigned u;
  std::memcpy(&u, &x, 4);
  return static_cast<unsigned short>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
float from_bf16(unsigned short h) {
  unsigned u = static_cast<unsigned>(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
float half(unsigned reg, int hi) { return from_bf16(static_cast<unsigned short>(hi ? reg >> 16 : reg)); }
}  // namespace emu

void __syncthreads() { emu::cta_barrier->arrive_and_wait(); }

float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  auto& ex = emu::exchange[emu::warp()];
  ex.f[emu::lane()] = v;
  emu::warp_sync();
  const float r = ex.f[emu::lane() ^ lane_mask];
  emu::warp_sync();
  return r;
}

float __int_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

char* emulated_shared_memory() { return emu::shared; }

unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(static_cast<const char*>(p) - emu::shared);
}

void cp_async_16(unsigned dst, const void* src, int bytes) {
  if (dst % 16) { std::fprintf(stderr, "cp.async: shared address %u not 16-byte aligned\n", dst); std::abort(); }
  emu::Pending p{dst, {}};
  if (bytes) std::memcpy(p.bytes, src, 16);  // src-size 0: zeros, and the source is not read
  emu::pending.push_back(p);
}
void cp_async_commit() {}
void cp_async_wait_all() {
  for (const auto& p : emu::pending) std::memcpy(emu::shared + p.dst, p.bytes, 16);
  emu::pending.clear();
}

// ldmatrix .x4: lane 8 j + r supplies the address of row r of matrix j; thread t receives, in
// register j, row t / 4 of matrix j, elements 2 (t % 4) and 2 (t % 4) + 1 (low half first).
// .trans delivers the transpose: elements [2 (t % 4)][t / 4] and [2 (t % 4) + 1][t / 4].
void ldmatrix_common(unsigned (&r)[4], unsigned addr, bool trans) {
  auto& ex = emu::exchange[emu::warp()];
  const int t = emu::lane();
  if (addr % 16) { std::fprintf(stderr, "ldmatrix: row address %u not 16-byte aligned\n", addr); std::abort(); }
  ex.addr[t] = addr;
  emu::warp_sync();
  for (int j = 0; j < 4; ++j) {
    unsigned short e[2];
    for (int h = 0; h < 2; ++h) {
      const int row = trans ? 2 * (t % 4) + h : t / 4;
      const int col = trans ? t / 4 : 2 * (t % 4) + h;
      std::memcpy(&e[h], emu::shared + ex.addr[8 * j + row] + 2 * col, 2);
    }
    r[j] = e[0] | (static_cast<unsigned>(e[1]) << 16);
  }
  emu::warp_sync();
}
void ldmatrix_x4(unsigned (&r)[4], unsigned addr) { ldmatrix_common(r, addr, false); }
void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) { ldmatrix_common(r, addr, true); }

// mma.m16n8k16 .bf16, fragments per the PTX ISA (g = lane / 4, i = lane % 4):
//   A 16x16: reg 0 {A[g][2i], A[g][2i+1]}, reg 1 rows g + 8, reg 2 columns + 8, reg 3 both + 8
//   B 16x8:  reg 0 {B[2i][g], B[2i+1][g]}, reg 1 rows (k) + 8
//   C 16x8:  c0, c1 = C[g][2i], C[g][2i+1]; c2, c3 = rows g + 8
void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  auto& ex = emu::exchange[emu::warp()];
  const int t = emu::lane();
  for (int j = 0; j < 4; ++j) ex.a[t][j] = a[j];
  ex.b[t][0] = b0;
  ex.b[t][1] = b1;
  emu::warp_sync();
  auto A = [&](int row, int k) {
    return emu::half(ex.a[(row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2);
  };
  auto B = [&](int k, int n) { return emu::half(ex.b[n * 4 + (k % 8) / 2][k >= 8], k % 2); };
  for (int e = 0; e < 4; ++e) {
    const int row = t / 4 + 8 * (e / 2), col = 2 * (t % 4) + e % 2;
    float acc = c[e];
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    c[e] = acc;
  }
  emu::warp_sync();
  if (t == 0 && emu::warp() == 0) ++emu::mma_calls;
}

unsigned pack_bf16(float lo, float hi) {
  return emu::to_bf16(lo) | (static_cast<unsigned>(emu::to_bf16(hi)) << 16);
}
float fast_exp2(float x) { return std::exp2(x); }
float neg_inf() { return -INFINITY; }

#include "../kernels/dsa_attention.cu"

using Kernel = void (*)(const dsa::u16*, const dsa::u16*, const dsa::u16*, dsa::u16*, const int*,
                        const int*, int, int, int, int, int, long long, long long, long long,
                        long long, long long, long long, long long, long long, long long,
                        long long, long long, long long, float);

int main(int argc, char** argv) {
  if (argc != 10) { std::fprintf(stderr, "usage: dsa_emulator D BLOCK ROWS B H Lq Lk MASK SEED\n"); return 1; }
  const int D = std::atoi(argv[1]), BLOCK = std::atoi(argv[2]), ROWS = std::atoi(argv[3]);
  const int B = std::atoi(argv[4]), H = std::atoi(argv[5]), Lq = std::atoi(argv[6]), Lk = std::atoi(argv[7]);
  const std::string mask_kind = argv[8];
  std::mt19937 rng(std::atoi(argv[9]));
  const int variant = D * 1000000 + BLOCK * 1000 + ROWS;
  Kernel kernel = variant == 64064064     ? dsa::dsa_fwd<64, 64, 64>
                  : variant == 64128064   ? dsa::dsa_fwd<64, 128, 64>
                  : variant == 64128128   ? dsa::dsa_fwd<64, 128, 128>
                  : variant == 128064064  ? dsa::dsa_fwd<128, 64, 64>
                  : variant == 128128064  ? dsa::dsa_fwd<128, 128, 64>
                  : variant == 128128128  ? dsa::dsa_fwd<128, 128, 128> : nullptr;
  if (!kernel) { std::fprintf(stderr, "D must be 64 or 128, BLOCK 64 or 128, ROWS 64 or BLOCK\n"); return 1; }
  const int nq = (Lq + BLOCK - 1) / BLOCK, nk = (Lk + BLOCK - 1) / BLOCK;

  // q, k, v with padded token strides (strided views, as the DiT's q and kv projections give);
  // out contiguous [B, Lq, H, D].
  const long long q_st = (long long)H * D + 8, q_sb = Lq * q_st;
  const long long k_st = (long long)H * D + 16, k_sb = Lk * k_st;
  std::normal_distribution<float> normal(0.f, 1.f);
  auto fill = [&](size_t n) {
    std::vector<dsa::u16> x(n);
    for (auto& e : x) e = emu::to_bf16(normal(rng));
    return x;
  };
  std::vector<dsa::u16> q = fill(B * q_sb), k = fill(B * k_sb), v = fill(B * k_sb);
  std::vector<dsa::u16> out((size_t)B * Lq * H * D, 0xffff);  // NaN-filled: every element must be written

  std::vector<int> counts(B * H * nq), indices((size_t)B * H * nq * nk, -1);
  std::vector<char> keep((size_t)B * H * nq * nk);
  std::uniform_real_distribution<float> unif(0.f, 1.f);
  for (int r = 0; r < B * H * nq; ++r) {
    const int qb = r % nq;
    for (int c = 0; c < nk; ++c) {
      bool on = mask_kind == "full" || c == qb % nk || (mask_kind != "diagonal" && unif(rng) < 0.35f);
      if (mask_kind == "empty_row" && r == 1) on = false;
      keep[(size_t)r * nk + c] = on;
      if (on) indices[(size_t)r * nk + counts[r]++] = c;
    }
  }

  const long long o_st = (long long)H * D, o_sb = Lq * o_st;
  const float scale_log2 = std::log2(std::exp(1.0)) / std::sqrt((double)D);
  const size_t shared_bytes = (size_t)(ROWS + 4 * 64) * D * 2;
  const int threads = ROWS * 2;
  for (int bz = 0; bz < B; ++bz)
    for (int by = 0; by < H; ++by)
      for (int bx = 0; bx < nq * (BLOCK / ROWS); ++bx) {
        std::unique_ptr<char[]> smem(new char[shared_bytes]);
        std::memset(smem.get(), 0x7f, shared_bytes);  // garbage: the kernel must not read unwritten bytes
        emu::shared = smem.get();
        emu::cta_barrier = std::make_unique<std::barrier<>>(threads);
        for (int w = 0; w < threads / 32; ++w) emu::warp_barrier[w] = std::make_unique<std::barrier<>>(32);
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx.x = t;
            blockIdx = {bx, by, bz};
            kernel(q.data(), k.data(), v.data(), out.data(), counts.data(), indices.data(), Lq, Lk, H,
                   nq, nk, q_sb, q_st, D, k_sb, k_st, D, k_sb, k_st, D, o_sb, o_st, D, scale_log2);
          });
        for (auto& th : pool) th.join();
      }

  // Reference in double on the same bf16 values; a row with no key is 0.
  double max_err = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < Lq; ++i) {
        const int r = (b * H + h) * nq + i / BLOCK;
        std::vector<double> s(Lk, -INFINITY);
        double mx = -INFINITY;
        for (int j = 0; j < Lk; ++j) {
          if (!keep[(size_t)r * nk + j / BLOCK]) continue;
          double dot = 0;
          for (int d = 0; d < D; ++d)
            dot += emu::from_bf16(q[b * q_sb + i * q_st + h * D + d]) *
                   emu::from_bf16(k[b * k_sb + j * k_st + h * D + d]);
          s[j] = dot / std::sqrt((double)D);
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < Lk; ++j) sum += std::isinf(s[j]) ? 0 : std::exp(s[j] - mx);
        for (int d = 0; d < D; ++d) {
          double o = 0;
          for (int j = 0; j < Lk; ++j)
            if (!std::isinf(s[j])) o += std::exp(s[j] - mx) / sum * emu::from_bf16(v[b * k_sb + j * k_st + h * D + d]);
          const float got = emu::from_bf16(out[b * o_sb + i * o_st + h * D + d]);
          const double err = std::isnan(got) ? INFINITY : std::fabs(got - o);
          max_err = std::max(max_err, err);
        }
      }
  std::printf("max_abs_err %.6g mma_calls %lld\n", max_err, emu::mma_calls);
  return 0;
}
