// cudaemu.h: run fastnn's CUDA C kernels (kernels/gpu/*.cu, unchanged) on the CPU, for tests.
//
// Every CUDA thread of a block is a fiber (a few lines of assembly on x86-64, ucontext elsewhere) with its own threadIdx; one OS thread runs the
// fibers of one block at a time, switching only at __syncthreads and at warp shuffles, so a block
// runs deterministically in a chosen thread order. What the kernels use is defined here:
// threadIdx/blockIdx/blockDim/gridDim, __shared__ (one copy, poisoned with NaN bytes before every
// block so a read that misses a barrier sees garbage), __syncthreads, __shfl_*_sync over 32-lane
// warps, atomicAdd, the bit-cast intrinsics, the math built-ins (from the host libm), and
// flush-to-zero for float instantiations (MXCSR FTZ/DAZ while a float kernel runs, as CuPy's
// -ftz=true does; double arithmetic keeps its subnormals, as on the GPU).
//
// The launcher stops a kernel with a message (returned to Python, never abort()) on:
// barrier divergence (threads of a block at different __syncthreads, or some exited while others
// wait), a shuffle whose mask names lanes that do not exist (full mask in a partial warp) or have
// exited, shuffles that do not match up, and deadlock. Thread order: mode 0 runs threads in
// index order, mode 1 in reverse, mode 2 in a random order drawn from the seed at every
// scheduling pass (blocks too are visited in a random order).
//
// What this cannot show: streams, graphs, cuBLAS, the memory pool, the GPU math library's ulps,
// real concurrency between blocks (blocks run one after another), and speed.
#pragma once

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define FASTNN_EMU_HAVE_MXCSR 1
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
// One copy of each __shared__ array. The builder (cudaemu/build.py) follows each __shared__
// declaration with fastnn_emu::poison_shared(name, sizeof name): the first thread of a block to
// reach it fills it with 0xff bytes (NaN for float and double), so a read that a missing
// __syncthreads lets through sees NaN instead of the previous block's value.
#define __shared__ static __attribute__((aligned(16)))

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

namespace fastnn_emu {

// ------------------------------------------------------------------ fibers
// x86-64: switch stacks by saving the callee-saved registers on the old stack (no signal-mask
// system call, unlike swapcontext, which dominated the run time). Elsewhere: ucontext.
#if defined(__x86_64__)
extern "C" void fastnn_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .hidden fastnn_emu_switch
    .type fastnn_emu_switch,@function
fastnn_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fastnn_emu_switch, .-fastnn_emu_switch
)");
struct Ctx { void* sp = nullptr; };
inline void ctx_switch(Ctx* from, Ctx* to) { fastnn_emu_switch(&from->sp, to->sp); }
inline void ctx_make(Ctx* c, char* stack, size_t size, void (*fn)()) {
    uintptr_t top = ((uintptr_t)(stack + size)) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;          // fn's return address slot: fn never returns
    *--sp = (void*)fn;        // popped by ret
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12-r15
    c->sp = sp;
}
#else
struct Ctx { ucontext_t uc; };
inline void ctx_switch(Ctx* from, Ctx* to) { swapcontext(&from->uc, &to->uc); }
inline void ctx_make(Ctx* c, char* stack, size_t size, void (*fn)()) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, fn, 0);
}
#endif

enum State { RUNNABLE, AT_BARRIER, AT_SHFL, DONE };

struct Thread {
    uint3 tid;
    int linear, warp, lane;
    State state;
    long long barriers;   // __syncthreads passed or waiting
    const char* bfile;
    int bline;
    long long shuffles;   // shuffles started
    unsigned mask;        // the mask of the shuffle this thread waits in
    Ctx ctx;
};

struct Block { uint3 idx; dim3 dim, grid; };

inline Block blk;
inline Thread* cur = nullptr;
inline std::vector<Thread> threads;
inline std::vector<char> stacks;
inline size_t stack_size = 64 * 1024;
inline Ctx sched_ctx;
inline std::function<void()> body;
inline bool failed = false;
inline char error[2048];
inline std::vector<unsigned long long> shfl_buf;  // [warp][parity][lane]
inline long long switches = 0;
inline long long generation = 0;                                   // blocks started
inline std::vector<std::pair<const void*, long long>> poisoned;    // shared array -> block it was poisoned in

inline void poison_shared(void* p, size_t n) {
    for (auto& e : poisoned) {
        if (e.first == p) {
            if (e.second != generation) { memset(p, 0xff, n); e.second = generation; }
            return;
        }
    }
    memset(p, 0xff, n);
    poisoned.emplace_back(p, generation);
}

[[noreturn]] inline __attribute__((format(printf, 1, 2))) void fail(const char* fmt, ...) {
    if (!failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error, sizeof error, fmt, ap);
        va_end(ap);
        failed = true;
    }
    ctx_switch(&cur->ctx, &sched_ctx);  // never resumed
    __builtin_unreachable();
}

inline void yield() {
    ++switches;
    ctx_switch(&cur->ctx, &sched_ctx);
}

inline void syncthreads(const char* file, int line) {
    cur->barriers++;
    cur->bfile = file;
    cur->bline = line;
    cur->state = AT_BARRIER;
    yield();
}

inline int warp_lanes(int warp) {
    const int n = (int)(blk.dim.x * blk.dim.y * blk.dim.z);
    const int left = n - warp * 32;
    return left < 32 ? left : 32;
}

// Lane `cur` offers v; returns the value of lane src (src computed by the caller from its lane).
template <typename T>
inline T shuffle(unsigned mask, T v, int src, const char* what) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    Thread* me = cur;
    const int lanes = warp_lanes(me->warp);
    const unsigned present = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    if (!(mask & (1u << me->lane)))
        fail("%s: lane %d calls it with mask 0x%08x that does not include itself", what, me->lane, mask);
    if (mask & ~present)
        fail("%s with mask 0x%08x in a partial warp: warp %d of block (%u,%u,%u) has only %d lanes "
             "(block of %u x %u x %u threads); the lanes beyond it do not exist", what, mask, me->warp,
             blk.idx.x, blk.idx.y, blk.idx.z, lanes, blk.dim.x, blk.dim.y, blk.dim.z);
    const long long seq = me->shuffles++;
    unsigned long long* slots = &shfl_buf[((size_t)me->warp * 2 + (seq & 1)) * 32];
    unsigned long long bits = 0;
    memcpy(&bits, &v, sizeof(T));
    slots[me->lane] = bits;
    me->mask = mask;
    me->state = AT_SHFL;
    yield();  // the scheduler resumes the lanes of `mask` once all of them have arrived
    if (src < 0 || src >= 32 || !(mask & (1u << src))) return v;  // out of range: own value
    T out;
    memcpy(&out, &slots[src], sizeof(T));
    return out;
}

// Run one block; returns false (with `error` set) when a check fails.
inline bool run_block(std::mt19937_64& rng, int mode) {
    const int n = (int)threads.size();
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = mode == 1 ? n - 1 - i : i;
    for (;;) {
        if (mode == 2) std::shuffle(order.begin(), order.end(), rng);
        bool ran = false;
        for (int k = 0; k < n; ++k) {
            Thread& t = threads[order[k]];
            if (t.state != RUNNABLE) continue;
            cur = &t;
            ++switches;
            ctx_switch(&sched_ctx, &t.ctx);
            cur = nullptr;
            if (failed) return false;
            ran = true;
        }
        if (ran) continue;
        // Nobody can run: release a shuffle, a barrier, or report why the block is stuck.
        int done = 0, at_barrier = 0, at_shfl = 0;
        for (auto& t : threads) {
            done += t.state == DONE;
            at_barrier += t.state == AT_BARRIER;
            at_shfl += t.state == AT_SHFL;
        }
        if (done == n) return true;
        bool released = false;
        for (auto& t : threads) {
            if (t.state != AT_SHFL) continue;
            // All lanes of t's mask at the same shuffle? Then release them all.
            const int base = t.warp * 32;
            bool all = true;
            for (int l = 0; l < 32 && all; ++l) {
                if (!(t.mask & (1u << l))) continue;
                Thread& o = threads[base + l];
                if (o.state == DONE) {
                    snprintf(error, sizeof error, "__shfl_*_sync: lane %d of warp %d (block (%u,%u,%u)) "
                             "is in the mask 0x%08x but has exited", l, t.warp, blk.idx.x, blk.idx.y, blk.idx.z, t.mask);
                    failed = true;
                    return false;
                }
                if (o.state != AT_SHFL) all = false;
                else if (o.shuffles != t.shuffles || o.mask != t.mask) {
                    snprintf(error, sizeof error, "__shfl_*_sync: lanes %d and %d of warp %d (block (%u,%u,%u)) "
                             "are in different shuffles (number %lld mask 0x%08x vs number %lld mask 0x%08x)",
                             t.lane, l, t.warp, blk.idx.x, blk.idx.y, blk.idx.z, t.shuffles, t.mask,
                             o.shuffles, o.mask);
                    failed = true;
                    return false;
                }
            }
            if (!all) continue;
            for (int l = 0; l < 32; ++l)
                if (t.mask & (1u << l)) threads[base + l].state = RUNNABLE;
            released = true;
        }
        if (released) continue;
        if (at_shfl) {
            for (auto& t : threads) {
                if (t.state != AT_SHFL) continue;
                snprintf(error, sizeof error, "deadlock: lane %d of warp %d (block (%u,%u,%u)) waits in a "
                         "shuffle (mask 0x%08x) for lanes that are at a __syncthreads or elsewhere",
                         t.lane, t.warp, blk.idx.x, blk.idx.y, blk.idx.z, t.mask);
                break;
            }
            failed = true;
            return false;
        }
        // Everyone left is at a barrier.
        const Thread* first = nullptr;
        for (auto& t : threads) {
            if (t.state != AT_BARRIER) continue;
            if (!first) { first = &t; continue; }
            if (t.barriers != first->barriers || t.bline != first->bline || strcmp(t.bfile, first->bfile)) {
                snprintf(error, sizeof error, "barrier divergence in block (%u,%u,%u): thread (%u,%u,%u) waits at "
                         "__syncthreads %s:%d (its barrier %lld) while thread (%u,%u,%u) waits at %s:%d (barrier %lld)",
                         blk.idx.x, blk.idx.y, blk.idx.z, t.tid.x, t.tid.y, t.tid.z, t.bfile, t.bline, t.barriers,
                         first->tid.x, first->tid.y, first->tid.z, first->bfile, first->bline, first->barriers);
                failed = true;
                return false;
            }
        }
        if (done) {
            const Thread* gone = nullptr;
            for (auto& t : threads) if (t.state == DONE) { gone = &t; break; }
            snprintf(error, sizeof error, "barrier divergence in block (%u,%u,%u): %d threads wait at __syncthreads "
                     "%s:%d but %d have exited (first: thread (%u,%u,%u)); every thread of the block must reach it",
                     blk.idx.x, blk.idx.y, blk.idx.z, at_barrier, first->bfile, first->bline, done,
                     gone->tid.x, gone->tid.y, gone->tid.z);
            failed = true;
            return false;
        }
        for (auto& t : threads) t.state = RUNNABLE;
    }
}

inline void entry() {
    body();
    cur->state = DONE;
    ctx_switch(&cur->ctx, &sched_ctx);
}

inline int run(const unsigned* g, const unsigned* b, unsigned long long seed, int mode, bool ftz) {
    failed = false;
    error[0] = 0;
    const long long nthreads = (long long)b[0] * b[1] * b[2];
    if (nthreads <= 0 || nthreads > 1024 || b[2] > 64 || g[0] == 0 || g[1] == 0 || g[2] == 0 ||
        g[1] > 65535 || g[2] > 65535) {
        snprintf(error, sizeof error, "invalid launch: grid (%u,%u,%u), block (%u,%u,%u) (at most 1024 threads "
                 "a block, every dimension at least 1)", g[0], g[1], g[2], b[0], b[1], b[2]);
        return 1;
    }
    blk.dim = {b[0], b[1], b[2]};
    blk.grid = {g[0], g[1], g[2]};
    threads.assign((size_t)nthreads, Thread{});
    if (stacks.size() < (size_t)nthreads * stack_size) stacks.resize((size_t)nthreads * stack_size);
    shfl_buf.assign((size_t)((nthreads + 31) / 32) * 64, 0);
    std::mt19937_64 rng(seed);
    std::vector<unsigned long long> blocks((size_t)g[0] * g[1] * g[2]);
    for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = i;
    if (mode == 2) std::shuffle(blocks.begin(), blocks.end(), rng);
    else if (mode == 1) std::reverse(blocks.begin(), blocks.end());
#ifdef FASTNN_EMU_HAVE_MXCSR
    const unsigned csr = _mm_getcsr();
    if (ftz) _mm_setcsr(csr | 0x8040);  // FTZ | DAZ
#endif
    bool ok = true;
    for (unsigned long long bi : blocks) {
        blk.idx = {(unsigned)(bi % g[0]), (unsigned)((bi / g[0]) % g[1]), (unsigned)(bi / ((unsigned long long)g[0] * g[1]))};
        ++generation;
        for (long long i = 0; i < nthreads; ++i) {
            Thread& t = threads[(size_t)i];
            t = Thread{};
            t.tid = {(unsigned)(i % b[0]), (unsigned)((i / b[0]) % b[1]), (unsigned)(i / ((long long)b[0] * b[1]))};
            t.linear = (int)i;
            t.warp = (int)(i / 32);
            t.lane = (int)(i % 32);
            t.state = RUNNABLE;
            t.bfile = "";
            ctx_make(&t.ctx, stacks.data() + (size_t)i * stack_size, stack_size, entry);
        }
        if (!run_block(rng, mode)) {
            ok = false;
            break;
        }
    }
#ifdef FASTNN_EMU_HAVE_MXCSR
    _mm_setcsr(csr);
#endif
    return ok ? 0 : 1;
}

template <typename T> struct Name;
template <> struct Name<float> { static std::string get() { return "float"; } };
template <> struct Name<double> { static std::string get() { return "double"; } };
template <> struct Name<int> { static std::string get() { return "int32"; } };
template <> struct Name<unsigned int> { static std::string get() { return "uint32"; } };
template <> struct Name<long long> { static std::string get() { return "int64"; } };
template <> struct Name<long> { static std::string get() { return "int64"; } };
template <> struct Name<unsigned long long> { static std::string get() { return "uint64"; } };
template <> struct Name<unsigned long> { static std::string get() { return "uint64"; } };
template <> struct Name<bool> { static std::string get() { return "bool"; } };
template <typename T> struct Name<T*> { static std::string get() { return Name<std::remove_cv_t<T>>::get() + "*"; } };

template <typename... A>
std::string signature(void (*)(A...)) {
    std::string s;
    ((s += (s.empty() ? "" : ","), s += Name<std::remove_cv_t<A>>::get()), ...);
    return s;
}

template <typename... A, size_t... I>
void call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A>
int launch(void (*k)(A...), const unsigned* g, const unsigned* b, void** args, unsigned long long seed, int mode,
           bool ftz) {
    body = [k, args] { call(k, args, std::index_sequence_for<A...>{}); };
    const int rc = run(g, b, seed, mode, ftz);
    body = nullptr;
    return rc;
}

}  // namespace fastnn_emu

// ------------------------------------------------------------------ what kernels see
#define threadIdx (fastnn_emu::cur->tid)
#define blockIdx (fastnn_emu::blk.idx)
#define blockDim (fastnn_emu::blk.dim)
#define gridDim (fastnn_emu::blk.grid)
#define warpSize 32
#define __syncthreads() fastnn_emu::syncthreads(__FILE__, __LINE__)

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = fastnn_emu::cur->lane;
    const int src = (lane & ~(width - 1)) + (((lane & (width - 1)) ^ lane_mask) & (width - 1));
    return fastnn_emu::shuffle(mask, v, src, "__shfl_xor_sync");
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = fastnn_emu::cur->lane, in = lane & (width - 1);
    const int src = in + (int)delta < width ? lane + (int)delta : lane;
    return fastnn_emu::shuffle(mask, v, src, "__shfl_down_sync");
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = fastnn_emu::cur->lane, in = lane & (width - 1);
    const int src = in >= (int)delta ? lane - (int)delta : lane;
    return fastnn_emu::shuffle(mask, v, src, "__shfl_up_sync");
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    const int lane = fastnn_emu::cur->lane;
    const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
    return fastnn_emu::shuffle(mask, v, src, "__shfl_sync");
}

template <typename T>
inline T atomicAdd(T* address, T v) {  // one OS thread runs the fibers: a plain update is atomic
    T old = *address;
    *address = old + v;
    return old;
}

// CUDA's integer and floating min/max overloads.
#define FASTNN_EMU_MINMAX(T)                                  \
    inline T min(T a, T b) { return a < b ? a : b; }          \
    inline T max(T a, T b) { return a > b ? a : b; }
FASTNN_EMU_MINMAX(int)
FASTNN_EMU_MINMAX(unsigned int)
FASTNN_EMU_MINMAX(long long)
FASTNN_EMU_MINMAX(unsigned long long)
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
inline long long __double_as_longlong(double d) { long long i; memcpy(&i, &d, 8); return i; }

#define FASTNN_EMU_EXPORT_T(name, T)                                                                    \
    extern "C" int emu_launch_##name##__##T(const unsigned* g, const unsigned* b, void** a,               \
                                              unsigned long long seed, int mode) {                       \
        return fastnn_emu::launch(&name<T>, g, b, a, seed, mode, std::is_same<T, float>::value);          \
    }                                                                                                     \
    extern "C" const char* emu_signature_##name##__##T() {                                                \
        static const std::string s = fastnn_emu::signature(&name<T>);                                    \
        return s.c_str();                                                                                 \
    }
#define FASTNN_EMU_EXPORT(name) FASTNN_EMU_EXPORT_T(name, float) FASTNN_EMU_EXPORT_T(name, double)

extern "C" const char* emu_error() { return fastnn_emu::error; }
extern "C" long long emu_switches() { return fastnn_emu::switches; }
