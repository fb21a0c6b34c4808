// Why: a sender that writes a bulk transfer straight into a ring another CPU reads pulls every line
// of it into its own cache first (a read for ownership of a line the reader holds), one round trip
// between the cores per line. Non-temporal stores write the lines without owning them first.
// Measured with `rstream perf` over shared memory (NOTES.md, "Same host").
#include "bulk_copy.h"
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>

void rs_copy_bypassing_cache(void *destination, const void *source, size_t n) {
    unsigned char *d = destination;
    const unsigned char *s = source;
    // To the next cache line: each line is then written whole by non-temporal stores, not half
    // by cached ones (a send's start in the ring is wherever the last one ended).
    size_t head = (64 - ((uintptr_t)d & 63)) & 63;
    if (head > n) head = n;
    memcpy(d, s, head);
    d += head; s += head; n -= head;
    for (; n >= 64; d += 64, s += 64, n -= 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    memcpy(d, s, n);
    _mm_sfence();
}
#else
void rs_copy_bypassing_cache(void *destination, const void *source, size_t n) {
    memcpy(destination, source, n);
}
#endif
