// A copy for bulk bytes that another CPU reads next: stores that bypass this CPU's caches.
#pragma once
#include <stddef.h>

/// Copies `n` bytes from `source` to `destination` (which must not overlap) with non-temporal
/// stores where the CPU has them (x86-64: 16-byte `movntdq` on the whole cache lines of the
/// destination, plain stores for the edges), then `sfence`: once it returns, every byte is
/// ordered before any later store of this thread, so a release store that publishes them
/// afterwards is correct (without the fence, non-temporal stores may become visible after it).
/// Elsewhere, `memcpy`.
void rs_copy_bypassing_cache(void *destination, const void *source, size_t n);
