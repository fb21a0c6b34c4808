// What libfabric's headers say in macros and flexible arrays, which Swift cannot import.
#pragma once
#include <stddef.h>
#include <stdint.h>

/// FI_VERSION(major, minor).
uint32_t rs_fi_version(uint32_t major, uint32_t minor);
/// FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION) of the headers we were built against.
uint32_t rs_fi_header_version(void);
/// FI_ADDR_UNSPEC, `(uint64_t)-1`.
uint64_t rs_fi_addr_unspec(void);
/// FI_KEY_NOTAVAIL, `(uint64_t)-1`.
uint64_t rs_fi_key_notavail(void);
/// offsetof(struct fi_eq_cm_entry, data): where connection private data starts in a CM event.
size_t rs_eq_cm_entry_data_offset(void);

/// sched_setaffinity(2), which needs _GNU_SOURCE and so does not import: pins thread/process `pid`.
int rs_sched_setaffinity(int pid, size_t size, const void *mask);

/// ThreadSanitizer's acquire/release annotations, or nothing where its runtime is absent: TSan does
/// not see Swift's Synchronization.Mutex on Linux, so TSan builds announce its edges themselves.
void rs_tsan_acquire(const void *address);
void rs_tsan_release(const void *address);

/// sched_getcpu(3), which also needs _GNU_SOURCE: the CPU the calling thread runs on.
int rs_sched_getcpu(void);
