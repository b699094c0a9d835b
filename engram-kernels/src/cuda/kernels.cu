// Engram CUDA kernels, compiled at run time by NVRTC (see cuda/mod.rs).
// Plain CUDA C, no headers: NVRTC needs nothing but itself to compile this file.
// Every kernel mirrors a CPU routine and is tested against it on a device.

typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;

// ---------------------------------------------------------------------------------------
// Hashing (fastmod.rs / hash.rs): floor modulo by a prime through a precomputed 64-bit
// reciprocal; one thread per position.

__device__ __forceinline__ u64 fm_rem_u64(u64 n, u64 d, u64 magic, u32 shift) {
    u64 q = __umul64hi(magic, n);
    u64 t = ((n - q) >> 1) + q;
    return n - (t >> shift) * d;
}

__device__ __forceinline__ u64 fm_rem_euclid(i64 n, u64 d, u64 magic, u32 shift, u64 wrap) {
    u64 r = fm_rem_u64((u64)n, d, magic, shift);
    if (n >= 0) return r;
    return r >= wrap ? r - wrap : r + (d - wrap);
}

// ids (batch, seq_len) canonical ids; out (batch, seq_len, heads) head index (+ offset when
// add_offsets != 0). Per head h (order-major): d[h], magic[h], shift[h], wrap[h], offsets[h].
extern "C" __global__ void engram_hash(
    const i64* __restrict__ ids, int batch, int seq_len, int max_ngram, int n_heads, i64 pad,
    const i64* __restrict__ mult, const u64* __restrict__ d, const u64* __restrict__ magic,
    const u32* __restrict__ shift, const u64* __restrict__ wrap, const u64* __restrict__ offsets,
    int add_offsets, u64* __restrict__ out)
{
    int pos = blockIdx.x * blockDim.x + threadIdx.x;
    if (pos >= batch * seq_len) return;
    int t = pos % seq_len;
    const i64* row = ids + (pos - t);
    int heads = (max_ngram - 1) * n_heads;
    u64* o = out + (u64)pos * heads;
    i64 mix = 0;
    for (int k = 0; k < max_ngram; ++k) {
        i64 x = (t >= k) ? row[t - k] : pad;
        mix ^= (i64)((u64)x * (u64)mult[k]);
        if (k == 0) continue;
        int lo = (k - 1) * n_heads;
        for (int j = 0; j < n_heads; ++j) {
            int h = lo + j;
            u64 r = fm_rem_euclid(mix, d[h], magic[h], shift[h], wrap[h]);
            o[h] = add_offsets ? r + offsets[h] : r;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Row gather + dequantize (quant.rs): rows of `row_bytes` bytes; dtype 0 f32, 1 bf16,
// 2 f16, 3 FP8 E4M3 with one E8M0 scale per `block` values after the codes.
// ids == 0: row r of the output is row r of `src` (rows already gathered by the store, in
// pinned host memory copied over); otherwise row r is src row ids[r], which must be < n_rows.
// Errors (NaN scale, id out of range) set *err to 1 (scale) or 2 (id).

__device__ __forceinline__ float e4m3_to_f32(u32 c) {
    u32 sign = (c >> 7) << 31;
    u32 e = (c >> 3) & 15u, m = c & 7u;
    if (e == 15u && m == 7u) return __int_as_float(sign | 0x7FC00000u);
    if (e == 0u) {
        float v = (float)m * 0.001953125f; // m * 2^-9
        return sign ? -v : v;
    }
    return __int_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

__device__ __forceinline__ float e8m0_to_f32(u32 c) {
    if (c == 0u) return __int_as_float(0x00400000u);
    return __int_as_float(c << 23);
}

__device__ __forceinline__ float f16_bits_to_f32(u32 h) {
    u32 sign = (h >> 15) << 31;
    u32 e = (h >> 10) & 31u, m = h & 1023u;
    if (e == 0u) {
        float v = (float)m * 5.9604644775390625e-08f; // m * 2^-24
        return sign ? -v : v;
    }
    if (e == 31u) return __int_as_float(sign | 0x7F800000u | (m << 13));
    return __int_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

extern "C" __global__ void engram_dequant(
    const unsigned char* __restrict__ src, u64 n_rows, const u64* __restrict__ ids,
    u64 rows_out, int width, int row_bytes, int dtype, int block,
    float* __restrict__ out, int* __restrict__ err)
{
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows_out * (u64)width) return;
    u64 r = i / (u64)width;
    int c = (int)(i - r * (u64)width);
    u64 row = r;
    if (ids) {
        row = ids[r];
        if (row >= n_rows) { atomicExch(err, 2); return; }
    }
    const unsigned char* p = src + row * (u64)row_bytes;
    float v;
    if (dtype == 0) {
        u32 b = (u32)p[4 * c] | ((u32)p[4 * c + 1] << 8) | ((u32)p[4 * c + 2] << 16) | ((u32)p[4 * c + 3] << 24);
        v = __int_as_float(b);
    } else if (dtype == 1) {
        u32 b = (u32)p[2 * c] | ((u32)p[2 * c + 1] << 8);
        v = __int_as_float(b << 16);
    } else if (dtype == 2) {
        u32 b = (u32)p[2 * c] | ((u32)p[2 * c + 1] << 8);
        v = f16_bits_to_f32(b);
    } else {
        u32 s = p[width + c / block];
        if (s == 255u) { atomicExch(err, 1); return; }
        v = e4m3_to_f32(p[c]) * e8m0_to_f32(s);
    }
    out[i] = v;
}

// ---------------------------------------------------------------------------------------
// Projections: C (m, n) = A (m, k) * W^T + bias, W (n, k) row-major ([out, in]).
// 32x32 output tile per block of 32x8 threads, k staged through shared memory.

#define GT 32
extern "C" __global__ void engram_gemm_nt(
    const float* __restrict__ A, int m, const float* __restrict__ W, int n, int k,
    const float* __restrict__ bias, float* __restrict__ C)
{
    __shared__ float As[GT][GT + 1];
    __shared__ float Ws[GT][GT + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int row0 = blockIdx.y * GT, col0 = blockIdx.x * GT;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k0 = 0; k0 < k; k0 += GT) {
        for (int rr = ty; rr < GT; rr += 8) {
            int ar = row0 + rr, ac = k0 + tx;
            As[rr][tx] = (ar < m && ac < k) ? A[(u64)ar * k + ac] : 0.f;
            int wr = col0 + rr;
            Ws[rr][tx] = (wr < n && ac < k) ? W[(u64)wr * k + ac] : 0.f;
        }
        __syncthreads();
        for (int kk = 0; kk < GT; ++kk) {
            float w = Ws[tx][kk];
            for (int q = 0; q < 4; ++q) acc[q] += As[ty + 8 * q][kk] * w;
        }
        __syncthreads();
    }
    int col = col0 + tx;
    if (col >= n) return;
    for (int q = 0; q < 4; ++q) {
        int row = row0 + ty + 8 * q;
        if (row < m) C[(u64)row * n + col] = acc[q] + bias[col];
    }
}

// ---------------------------------------------------------------------------------------
// Gate (gate.rs / module.rs): one block per (token, branch). proj (tokens, (1+M) d) holds v
// then the M keys; hidden (tokens, M, d). Writes s, alpha (tokens, M) and the convolution
// input x = RMSNorm(alpha v) (tokens, M, d).

__device__ __forceinline__ float block_sum(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    float r = 0.f;
    if (threadIdx.x < 32) {
        r = (threadIdx.x < nw) ? sh[threadIdx.x] : 0.f;
        for (int o = 16; o > 0; o >>= 1) r += __shfl_down_sync(0xffffffffu, r, o);
        if (threadIdx.x == 0) sh[0] = r;
    }
    __syncthreads();
    return sh[0];
}

extern "C" __global__ void engram_gate(
    const float* __restrict__ proj, const float* __restrict__ hidden, int d, int M,
    const float* __restrict__ g_kq, const float* __restrict__ g_conv,
    float key_eps, float conv_eps, float* __restrict__ s_out, float* __restrict__ alpha_out,
    float* __restrict__ x)
{
    __shared__ float sh[32];
    int tok = blockIdx.x, b = blockIdx.y;
    u64 n = (u64)(1 + M) * d;
    const float* v = proj + tok * n;
    const float* kk = v + (u64)(1 + b) * d;
    const float* h = hidden + ((u64)tok * M + b) * d;
    const float* g = g_kq + (u64)b * d;
    float sv = 0.f, sk = 0.f, shh = 0.f, skh = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float vi = v[i], ki = kk[i], hi = h[i];
        sv += vi * vi; sk += ki * ki; shh += hi * hi; skh += ki * hi * g[i];
    }
    sv = block_sum(sv, sh);
    sk = block_sum(sk, sh);
    shh = block_sum(shh, sh);
    skh = block_sum(skh, sh);
    float fd = (float)d;
    float rk = 1.f / sqrtf(sk / fd + key_eps);
    float rh = 1.f / sqrtf(shh / fd + key_eps);
    float s = skh * rk * rh / sqrtf(fd);
    float logit = 0.f;
    if (s != 0.f) {
        float mag = sqrtf(fmaxf(fabsf(s), 1e-6f));
        logit = s > 0.f ? mag : -mag;
    }
    if (s != s) logit = s;
    float a = 1.f / (1.f + expf(-logit));
    if (threadIdx.x == 0) {
        s_out[(u64)tok * M + b] = s;
        alpha_out[(u64)tok * M + b] = a;
    }
    float ru = 1.f / sqrtf(a * a * sv / fd + conv_eps);
    float scale = a * ru;
    const float* gc = g_conv + (u64)b * d;
    float* xo = x + ((u64)tok * M + b) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) xo[i] = v[i] * scale * gc[i];
}

// ---------------------------------------------------------------------------------------
// Short convolution + SiLU + residual (conv.rs / module.rs): one thread per (token, channel).
// x (batch, seq_len, M*d); conv_w (M*d, w); y = alpha v + SiLU(sum_j w_j x[t - (w-1-j) dil]).

extern "C" __global__ void engram_conv(
    const float* __restrict__ x, const float* __restrict__ proj, const float* __restrict__ alpha,
    const float* __restrict__ conv_w, int batch, int seq_len, int d, int M, int w, int dil,
    float* __restrict__ y)
{
    u64 ch = (u64)M * d;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)batch * seq_len * ch) return;
    u64 tok = i / ch;
    int c = (int)(i - tok * ch);
    int t = (int)(tok % (u64)seq_len);
    float acc = 0.f;
    for (int j = 0; j < w; ++j) {
        int lag = (w - 1 - j) * dil;
        if (lag <= t) acc += conv_w[(u64)c * w + j] * x[(tok - lag) * ch + c];
    }
    int b = c / d, f = c - b * d;
    float u = alpha[tok * M + b] * proj[tok * (u64)(1 + M) * d + f];
    y[i] = u + acc / (1.f + expf(-acc));
}

// ---------------------------------------------------------------------------------------
// Decode convolution (one new position per sequence): x (B, M*d) is this step's input,
// ring (B, L, M*d) the last L = (w-1)*dil inputs of each sequence (slot = time % L, zeros
// before the start), pos (B) the time index of this step. Reads the history, writes y, then
// stores x into slot pos % L (the slot of lag L, read by this same thread first).

extern "C" __global__ void engram_conv_decode(
    const float* __restrict__ x, const float* __restrict__ proj, const float* __restrict__ alpha,
    const float* __restrict__ conv_w, float* __restrict__ ring, const u64* __restrict__ pos,
    int batch, int d, int M, int w, int dil, float* __restrict__ y)
{
    u64 ch = (u64)M * d;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)batch * ch) return;
    u64 b = i / ch;
    int c = (int)(i - b * ch);
    u64 L = (u64)(w - 1) * dil;
    u64 p = pos[b];
    float xc = x[i];
    float acc = conv_w[(u64)c * w + (w - 1)] * xc;
    float* rb = ring + b * L * ch;
    for (int j = 0; j + 1 < w; ++j) {
        u64 lag = (u64)(w - 1 - j) * dil;
        u64 slot = (p + L - lag) % L;
        acc += conv_w[(u64)c * w + j] * rb[slot * ch + c];
    }
    int br = c / d, f = c - br * d;
    float u = alpha[b * M + br] * proj[b * (u64)(1 + M) * d + f];
    y[i] = u + acc / (1.f + expf(-acc));
    if (L > 0) rb[(p % L) * ch + c] = xc;
}
