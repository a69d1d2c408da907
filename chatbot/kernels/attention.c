/* Attention over an int8 key/value cache for a decode step: an ONNX Runtime custom operator.
 *
 * It takes the place of ONNX Runtime's CPU GroupQueryAttention in a fused decode graph whose
 * cache is int8 with a scale per channel (training.export.kv_cache), with the same inputs and
 * the same cache: the keys and values of the new positions are stored as round(x / scale),
 * clipped to -128..127, at their places in the cache, and each query attends over the cache up
 * to its own position. ONNX Runtime's kernel converts every head's cache to float in a buffer
 * and then multiplies; this one reads each cached row once, as int8, straight into the sums,
 * which is what a step over many conversations waits on (README, "Fast graphs").
 *
 * chatbot.kernels compiles this file on the machine that serves (its own instructions:
 * -march=native) and registers it; where it cannot, the graph keeps ONNX Runtime's kernel.
 *
 * Inputs (as GroupQueryAttention's, packed): 0 qkv (batch, sequence, 3 * heads * head_dim)
 * float; 1, 2 the cache's keys and values (batch, heads, max_length, head_dim) int8; 3 seqlens_k
 * (batch) int32, each row's total length - 1; 4 total_sequence_length int32 (unused); 5, 6 the
 * key and value scales (heads * head_dim) float; 7 (optional) query_seqlens (batch) int32, each
 * row's new positions (the rest of the sequence is padding). Outputs: 0 (batch, sequence,
 * heads * head_dim) float; 1, 2 the cache, the same buffers as inputs 1, 2 when bound in place
 * (else a copy is made first). Attributes: num_heads, scale.
 *
 * ONNX Runtime's C API is used through the few entries of its function table this file needs,
 * named by their place in the table (OrtApi only ever grows at its end, so a place never
 * changes), which spares the build a header that no package on PyPI ships.
 */
#include <math.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct OrtStatus OrtStatus;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtShape OrtShape; /* OrtTensorTypeAndShapeInfo */
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtDomain OrtDomain; /* OrtCustomOpDomain */
typedef void (*AnyFunction)(void);
typedef const AnyFunction OrtApiTable[]; /* OrtApi: a table of function pointers */

typedef struct OrtApiBase {
    const OrtApiTable *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

#define API_VERSION 17 /* KernelContext_ParallelFor: ONNX Runtime 1.17 */
enum { ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };
enum { T_FLOAT = 1, T_INT8 = 3, T_INT32 = 6 };
enum { REQUIRED = 0, OPTIONAL = 1 };

/* places in OrtApi */
#define CREATE_STATUS 0
#define CREATE_DOMAIN 26
#define DOMAIN_ADD 27
#define ADD_DOMAIN 28
#define TENSOR_MUTABLE_DATA 51
#define DIMENSIONS_COUNT 61
#define DIMENSIONS 62
#define TYPE_AND_SHAPE 65
#define ATTRIBUTE_FLOAT 85
#define ATTRIBUTE_INT64 86
#define INPUT_COUNT 88
#define GET_INPUT 90
#define GET_OUTPUT 91
#define RELEASE_SHAPE 99
#define PARALLEL_FOR 274

static const OrtApiTable *api;
#define CALL(place, type) ((type)(*api)[place])

typedef OrtStatus *(*CreateStatusFn)(int, const char *);
typedef OrtStatus *(*DomainFn)(const char *, OrtDomain **);
typedef OrtStatus *(*DomainAddFn)(OrtDomain *, const void *);
typedef OrtStatus *(*AddDomainFn)(OrtSessionOptions *, OrtDomain *);
typedef OrtStatus *(*DataFn)(OrtValue *, void **);
typedef OrtStatus *(*CountFn)(const OrtShape *, size_t *);
typedef OrtStatus *(*DimsFn)(const OrtShape *, int64_t *, size_t);
typedef OrtStatus *(*ShapeFn)(const OrtValue *, OrtShape **);
typedef OrtStatus *(*FloatAttrFn)(const OrtKernelInfo *, const char *, float *);
typedef OrtStatus *(*IntAttrFn)(const OrtKernelInfo *, const char *, int64_t *);
typedef OrtStatus *(*InputCountFn)(const OrtKernelContext *, size_t *);
typedef OrtStatus *(*InputFn)(const OrtKernelContext *, size_t, const OrtValue **);
typedef OrtStatus *(*OutputFn)(OrtKernelContext *, size_t, const int64_t *, size_t, OrtValue **);
typedef void (*ReleaseShapeFn)(OrtShape *);
typedef OrtStatus *(*ParallelForFn)(const OrtKernelContext *, void (*)(void *, size_t), size_t, size_t, void *);

#define TRY(expression)                       \
    do {                                      \
        OrtStatus *failed_ = (expression);    \
        if (failed_) return failed_;          \
    } while (0)

static OrtStatus *fail(const char *message) {
    return CALL(CREATE_STATUS, CreateStatusFn)(ORT_INVALID_ARGUMENT, message);
}

/* OrtCustomOp, as far as version 17 reads it */
typedef struct CustomOp {
    uint32_t version;
    void *(*CreateKernel)(const struct CustomOp *, const OrtApiTable *, const OrtKernelInfo *);
    const char *(*GetName)(const struct CustomOp *);
    const char *(*GetExecutionProviderType)(const struct CustomOp *);
    int (*GetInputType)(const struct CustomOp *, size_t);
    size_t (*GetInputTypeCount)(const struct CustomOp *);
    int (*GetOutputType)(const struct CustomOp *, size_t);
    size_t (*GetOutputTypeCount)(const struct CustomOp *);
    void (*KernelCompute)(void *, OrtKernelContext *);
    void (*KernelDestroy)(void *);
    int (*GetInputCharacteristic)(const struct CustomOp *, size_t);
    int (*GetOutputCharacteristic)(const struct CustomOp *, size_t);
    int (*GetInputMemoryType)(const struct CustomOp *, size_t);
    int (*GetVariadicInputMinArity)(const struct CustomOp *);
    int (*GetVariadicInputHomogeneity)(const struct CustomOp *);
    int (*GetVariadicOutputMinArity)(const struct CustomOp *);
    int (*GetVariadicOutputHomogeneity)(const struct CustomOp *);
    OrtStatus *(*CreateKernelV2)(const struct CustomOp *, const OrtApiTable *, const OrtKernelInfo *, void **);
    OrtStatus *(*KernelComputeV2)(void *, OrtKernelContext *);
    void *InferOutputShapeFn;
    int (*GetStartVersion)(const struct CustomOp *);
    int (*GetEndVersion)(const struct CustomOp *);
} CustomOp;

typedef struct Kernel {
    int64_t heads;
    float scale;
} Kernel;

/* ---- the arithmetic ---------------------------------------------------------------------- */

/* Vectors as wide as the machine's registers: 16 floats with AVX-512, 8 otherwise (wider vectors
 * than the registers left GCC spilling them to the stack on AVX2: 1.5x slower than ONNX Runtime). */
#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif
typedef float floats __attribute__((vector_size(4 * LANES)));
typedef int32_t ints __attribute__((vector_size(4 * LANES)));
typedef float floats8 __attribute__((vector_size(32)));
typedef float floats4 __attribute__((vector_size(16)));

/* LANES int8 as floats: sign extension and conversion, one instruction each (GCC's own vector
 * conversion of bytes goes a lane at a time) */
static inline floats widen(const int8_t *p) {
    floats f;
#if defined(__AVX512F__)
    __m512 wide = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
    memcpy(&f, &wide, sizeof f);
#elif defined(__AVX2__)
    __m256 wide = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
    memcpy(&f, &wide, sizeof f);
#else
    for (int j = 0; j < LANES; j++) f[j] = (float)p[j];
#endif
    return f;
}

static inline floats load(const float *p) {
    floats f;
    memcpy(&f, p, sizeof f);
    return f;
}

static inline floats8 to8(floats a) { /* a's lanes summed down to 8 */
#if LANES == 16
    return __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    return a;
#endif
}

static inline float total(floats a) { /* a tree of sums, not a chain */
    floats8 b = to8(a);
    floats4 c = __builtin_shufflevector(b, b, 0, 1, 2, 3) + __builtin_shufflevector(b, b, 4, 5, 6, 7);
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* the sums of four vectors' lanes, in rounds of pairs */
static inline floats4 total4(const floats a[4]) {
    floats8 b[4] = {to8(a[0]), to8(a[1]), to8(a[2]), to8(a[3])};
    floats8 ab = __builtin_shufflevector(b[0], b[1], 0, 1, 2, 3, 8, 9, 10, 11) +
                 __builtin_shufflevector(b[0], b[1], 4, 5, 6, 7, 12, 13, 14, 15);
    floats8 cd = __builtin_shufflevector(b[2], b[3], 0, 1, 2, 3, 8, 9, 10, 11) +
                 __builtin_shufflevector(b[2], b[3], 4, 5, 6, 7, 12, 13, 14, 15);
    floats8 e = __builtin_shufflevector(ab, cd, 0, 1, 4, 5, 8, 9, 12, 13) +
                __builtin_shufflevector(ab, cd, 2, 3, 6, 7, 10, 11, 14, 15);
    return __builtin_shufflevector(e, e, 0, 2, 4, 6) + __builtin_shufflevector(e, e, 1, 3, 5, 7);
}

/* exp over LANES lanes (libm's expf is one call a position, which took longer than the rest of a
 * step's attention): x = n ln 2 + r with |r| <= ln 2 / 2, exp(r) by its Taylor series to r^7
 * (relative error below 1e-8), 2^n by the exponent's bits. For x <= 0 (scores less their maximum). */
static inline floats expv(floats x) {
    const floats lowest = (floats){0} - 87.0f, round = (floats){0} + 12582912.0f; /* 1.5 * 2^23 */
    ints low = x < lowest;
    x = (floats)((low & (ints)lowest) | (~low & (ints)x));
    floats t = x * 1.44269504f + round;
    floats n = t - round;
    floats r = x - n * 0.693145752f - n * 1.42860677e-6f;
    floats p = 1.0f / 5040.0f + r * 0.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    ints bits = (__builtin_convertvector(n, ints) + 127) << 23;
    return p * (floats)bits;
}

static inline int8_t quantize(float x, float scale) {
    float q = nearbyintf(x / scale);
    return (int8_t)(q > 127.0f ? 127.0f : (q < -128.0f ? -128.0f : q));
}

#define AHEAD 16 /* positions */

/* One query over ``n`` cached positions of one head: out = softmax(q·K) V, with ``qs`` the query
 * already multiplied by the key scales and the softmax scale. ``D`` is a constant where inlined. */
static inline void attend(const float *qs, const int8_t *keys, const int8_t *values, const float *vscale,
                          float *scores, int64_t n, const int D, float *out) {
    float top = -INFINITY;
    if (D % LANES == 0 && D <= 256) {
        floats q[256 / LANES];
        for (int c = 0; c < D / LANES; c++) q[c] = load(qs + LANES * c);
        int64_t t = 0;
        for (; t + 4 <= n; t += 4) { /* four positions, summed across together */
            floats a[4];
            for (int j = 0; j < 4; j++) {
                const int8_t *k = keys + (t + j) * D;
                /* the cache comes from memory a head at a time: ask for its rows ahead, and for
                 * the values read next, rather than wait on each line */
                __builtin_prefetch(k + AHEAD * D);
                __builtin_prefetch(values + (t + j) * D);
                a[j] = q[0] * widen(k);
                for (int c = 1; c < D / LANES; c++) a[j] += q[c] * widen(k + LANES * c);
            }
            floats4 s4 = total4(a);
            memcpy(scores + t, &s4, sizeof s4);
            for (int j = 0; j < 4; j++) top = s4[j] > top ? s4[j] : top;
        }
        for (; t < n; t++) {
            const int8_t *k = keys + t * D;
            floats a = q[0] * widen(k);
            for (int c = 1; c < D / LANES; c++) a += q[c] * widen(k + LANES * c);
            float s = total(a);
            scores[t] = s;
            top = s > top ? s : top;
        }
    } else {
        for (int64_t t = 0; t < n; t++) {
            float s = 0.0f;
            for (int d = 0; d < D; d++) s += qs[d] * (float)keys[t * D + d];
            scores[t] = s;
            top = s > top ? s : top;
        }
    }
    float sum = 0.0f;
    int64_t t = 0;
    floats sums = {0};
    for (; t + LANES <= n; t += LANES) {
        floats e = expv(load(scores + t) - top);
        memcpy(scores + t, &e, sizeof e);
        sums += e;
    }
    for (; t < n; t++) {
        scores[t] = expf(scores[t] - top);
        sum += scores[t];
    }
    sum += total(sums);
    float norm = 1.0f / sum;
    if (D % LANES == 0 && D <= 256) {
        floats acc[256 / LANES];
        for (int c = 0; c < D / LANES; c++) acc[c] = (floats){0};
        for (int64_t t = 0; t < n; t++) {
            const int8_t *v = values + t * D;
            float p = scores[t];
            for (int c = 0; c < D / LANES; c++) acc[c] += p * widen(v + LANES * c);
        }
        for (int c = 0; c < D / LANES; c++) {
            floats o = acc[c] * norm * load(vscale + LANES * c);
            memcpy(out + LANES * c, &o, sizeof o);
        }
    } else {
        for (int d = 0; d < D; d++) out[d] = 0.0f;
        for (int64_t t = 0; t < n; t++)
            for (int d = 0; d < D; d++) out[d] += scores[t] * (float)values[t * D + d];
        for (int d = 0; d < D; d++) out[d] *= norm * vscale[d];
    }
}

typedef struct Work {
    const float *qkv, *kscale, *vscale;
    const int32_t *seqlens, *fed;
    int8_t *keys, *values;
    float *out;
    int64_t batch, sequence, heads, length, head_dim;
    float scale;
    int out_of_memory; /* set by a task that could not get its scores' buffer */
} Work;

/* rows × heads tasks: one head of one row, all its new positions */
static void one_head(void *context, size_t task) {
    const Work *w = context;
    const int64_t H = w->heads, D = w->head_dim, S = w->sequence, T = w->length;
    const int64_t b = (int64_t)task / H, h = (int64_t)task % H, hidden = H * D;
    const int64_t end = (int64_t)w->seqlens[b] + 1;
    const int64_t fed = w->fed ? w->fed[b] : S, start = end - fed;
    int8_t *keys = w->keys + (b * H + h) * T * D, *values = w->values + (b * H + h) * T * D;
    const float *ks = w->kscale + h * D, *vs = w->vscale + h * D;
    for (int64_t i = 0; i < fed; i++) {
        const float *row = w->qkv + (b * S + i) * 3 * hidden + h * D;
        for (int64_t d = 0; d < D; d++) {
            keys[(start + i) * D + d] = quantize(row[hidden + d], ks[d]);
            values[(start + i) * D + d] = quantize(row[2 * hidden + d], vs[d]);
        }
    }
    float small[4096];
    float *scores = end <= 4096 ? small : malloc(sizeof(float) * (size_t)end);
    if (!scores) {
        __atomic_store_n((int *)&w->out_of_memory, 1, __ATOMIC_RELAXED);
        return;
    }
    float qs[256];
    for (int64_t i = 0; i < S; i++) {
        float *out = w->out + (b * S + i) * hidden + h * D;
        if (i >= fed) { /* padding: nothing cached, nothing meant to be read */
            memset(out, 0, sizeof(float) * (size_t)D);
            continue;
        }
        const float *q = w->qkv + (b * S + i) * 3 * hidden + h * D;
        for (int64_t d = 0; d < D; d++) qs[d] = q[d] * ks[d] * w->scale;
        const int64_t n = start + i + 1;
        switch (D) {
            case 64: attend(qs, keys, values, vs, scores, n, 64, out); break;
            case 128: attend(qs, keys, values, vs, scores, n, 128, out); break;
            case 32: attend(qs, keys, values, vs, scores, n, 32, out); break;
            default: attend(qs, keys, values, vs, scores, n, (int)D, out); break;
        }
    }
    if (scores != small) free(scores);
}

/* ---- the operator ------------------------------------------------------------------------ */

static OrtStatus *shape_of(const OrtValue *value, int64_t *dims, size_t most, size_t *count) {
    OrtShape *shape;
    TRY(CALL(TYPE_AND_SHAPE, ShapeFn)(value, &shape));
    OrtStatus *status = CALL(DIMENSIONS_COUNT, CountFn)(shape, count);
    if (!status && *count <= most) status = CALL(DIMENSIONS, DimsFn)(shape, dims, *count);
    CALL(RELEASE_SHAPE, ReleaseShapeFn)(shape);
    if (!status && *count > most) return fail("Int8Attention: an input has too many dimensions");
    return status;
}

static OrtStatus *input(OrtKernelContext *context, size_t index, void **data, int64_t *dims, size_t *count) {
    const OrtValue *value;
    TRY(CALL(GET_INPUT, InputFn)(context, index, &value));
    if (!value) {
        *data = NULL;
        return NULL;
    }
    TRY(shape_of(value, dims, 4, count));
    return CALL(TENSOR_MUTABLE_DATA, DataFn)((OrtValue *)value, data);
}

static OrtStatus *compute(void *state, OrtKernelContext *context) {
    const Kernel *kernel = state;
    void *data[8] = {0};
    int64_t dims[8][4];
    size_t counts[8] = {0}, inputs;
    TRY(CALL(INPUT_COUNT, InputCountFn)(context, &inputs));
    for (size_t i = 0; i < 8 && i < inputs; i++) TRY(input(context, i, &data[i], dims[i], &counts[i]));
    if (!data[0] || !data[1] || !data[2] || !data[3] || !data[5] || !data[6])
        return fail("Int8Attention: qkv, the cache, seqlens_k and both scales are required");
    if (counts[0] != 3 || counts[1] != 4 || counts[2] != 4)
        return fail("Int8Attention: qkv must be (batch, sequence, 3 * hidden) and the cache 4-D");
    Work w = {0};
    w.batch = dims[0][0];
    w.sequence = dims[0][1];
    w.heads = kernel->heads;
    w.length = dims[1][2];
    w.head_dim = dims[1][3];
    w.scale = kernel->scale;
    if (dims[1][1] != w.heads || dims[0][2] != 3 * w.heads * w.head_dim || dims[1][0] < w.batch ||
        memcmp(dims[1], dims[2], sizeof dims[1]) != 0)
        return fail("Int8Attention: the cache's heads and head size do not match qkv");
    if (w.head_dim > 256) return fail("Int8Attention: heads of more than 256 channels");
    w.qkv = data[0];
    w.seqlens = data[3];
    w.kscale = data[5];
    w.vscale = data[6];
    w.fed = inputs > 7 ? data[7] : NULL;
    for (int64_t b = 0; b < w.batch; b++) {
        const int64_t end = (int64_t)w.seqlens[b] + 1, fed = w.fed ? w.fed[b] : w.sequence;
        if (fed < 0 || fed > w.sequence || end > w.length || end - fed < 0)
            return fail("Int8Attention: a row's positions do not fit its cache");
    }
    int64_t out_dims[3] = {w.batch, w.sequence, w.heads * w.head_dim};
    OrtValue *out, *present[2];
    TRY(CALL(GET_OUTPUT, OutputFn)(context, 0, out_dims, 3, &out));
    TRY(CALL(TENSOR_MUTABLE_DATA, DataFn)(out, (void **)&w.out));
    int8_t *caches[2];
    for (int side = 0; side < 2; side++) {
        TRY(CALL(GET_OUTPUT, OutputFn)(context, 1 + side, dims[1 + side], 4, &present[side]));
        TRY(CALL(TENSOR_MUTABLE_DATA, DataFn)(present[side], (void **)&caches[side]));
        if (caches[side] != data[1 + side]) { /* not bound in place: carry the cache over */
            size_t bytes = 1;
            for (int j = 0; j < 4; j++) bytes *= (size_t)dims[1 + side][j];
            memcpy(caches[side], data[1 + side], bytes);
        }
    }
    w.keys = caches[0];
    w.values = caches[1];
    size_t tasks = (size_t)(w.batch * w.heads);
    TRY(CALL(PARALLEL_FOR, ParallelForFn)(context, one_head, tasks, 0, &w));
    if (w.out_of_memory) return CALL(CREATE_STATUS, CreateStatusFn)(ORT_FAIL, "Int8Attention: out of memory");
    return NULL;
}

static OrtStatus *create(const CustomOp *op, const OrtApiTable *table, const OrtKernelInfo *info, void **state) {
    (void)op;
    (void)table;
    Kernel *kernel = calloc(1, sizeof *kernel);
    if (!kernel) return CALL(CREATE_STATUS, CreateStatusFn)(ORT_FAIL, "Int8Attention: out of memory");
    OrtStatus *status = CALL(ATTRIBUTE_INT64, IntAttrFn)(info, "num_heads", &kernel->heads);
    if (!status) status = CALL(ATTRIBUTE_FLOAT, FloatAttrFn)(info, "scale", &kernel->scale);
    if (!status && kernel->heads < 1) status = fail("Int8Attention: num_heads must be positive");
    if (status) {
        free(kernel);
        return status;
    }
    *state = kernel;
    return NULL;
}

static void *create_v1(const CustomOp *op, const OrtApiTable *table, const OrtKernelInfo *info) {
    void *state = NULL;
    return create(op, table, info, &state) ? NULL : state;
}

static void compute_v1(void *state, OrtKernelContext *context) { (void)compute(state, context); }
static void destroy(void *state) { free(state); }
static const char *name(const CustomOp *op) { (void)op; return "Int8Attention"; }
static const char *provider(const CustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static const int input_types[] = {T_FLOAT, T_INT8, T_INT8, T_INT32, T_INT32, T_FLOAT, T_FLOAT, T_INT32};
static const int output_types[] = {T_FLOAT, T_INT8, T_INT8};
static int input_type(const CustomOp *op, size_t i) { (void)op; return input_types[i]; }
static size_t input_count(const CustomOp *op) { (void)op; return 8; }
static int output_type(const CustomOp *op, size_t i) { (void)op; return output_types[i]; }
static size_t output_count(const CustomOp *op) { (void)op; return 3; }
static int input_kind(const CustomOp *op, size_t i) { (void)op; return i == 4 || i == 7 ? OPTIONAL : REQUIRED; }
static int output_kind(const CustomOp *op, size_t i) { (void)op; (void)i; return REQUIRED; }
static int memory_type(const CustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int zero(const CustomOp *op) { (void)op; return 0; }
static int first_version(const CustomOp *op) { (void)op; return 1; }
static int last_version(const CustomOp *op) { (void)op; return 0x7fffffff; }

static const CustomOp operator = {
    API_VERSION, create_v1, name, provider, input_type, input_count, output_type, output_count,
    compute_v1, destroy, input_kind, output_kind, memory_type, zero, zero, zero, zero,
    create, compute, NULL, first_version, last_version,
};

/* what SessionOptions.register_custom_ops_library calls */
OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    api = base->GetApi(API_VERSION);
    if (!api) return NULL; /* an ONNX Runtime before 1.17: chatbot.kernels does not get here */
    OrtDomain *domain;
    TRY(CALL(CREATE_DOMAIN, DomainFn)("ai.chatbot", &domain));
    TRY(CALL(DOMAIN_ADD, DomainAddFn)(domain, &operator));
    return CALL(ADD_DOMAIN, AddDomainFn)(options, domain);
}
