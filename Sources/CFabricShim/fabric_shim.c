#define _GNU_SOURCE
#include "fabric_shim.h"
#include <sched.h>
#include <rdma/fabric.h>
#include <rdma/fi_eq.h>

uint32_t rs_fi_version(uint32_t major, uint32_t minor) { return FI_VERSION(major, minor); }
uint32_t rs_fi_header_version(void) { return FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION); }
uint64_t rs_fi_addr_unspec(void) { return FI_ADDR_UNSPEC; }
uint64_t rs_fi_key_notavail(void) { return FI_KEY_NOTAVAIL; }
size_t rs_eq_cm_entry_data_offset(void) { return offsetof(struct fi_eq_cm_entry, data); }

int rs_sched_setaffinity(int pid, size_t size, const void *mask) {
    return sched_setaffinity(pid, size, (const cpu_set_t *)mask);
}

extern void __tsan_acquire(void *address) __attribute__((weak));
extern void __tsan_release(void *address) __attribute__((weak));
void rs_tsan_acquire(const void *address) { if (__tsan_acquire) __tsan_acquire((void *)address); }
void rs_tsan_release(const void *address) { if (__tsan_release) __tsan_release((void *)address); }

int rs_sched_getcpu(void) { return sched_getcpu(); }
