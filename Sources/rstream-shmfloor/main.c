// The same-host floor for `rstream perf`: a bare two-process ping-pong of one message in a shared
// mapping, each process pinned to its own CPU. No protocol, no checks: a sequence number after
// the bytes, stored with release and spun on with acquire. What any same-host byte stream pays at
// least (the cache lines of the bytes and of the flag moving between two cores).
//
//   rstream-shmfloor SIZE WARMUP MEASURED [PARENT_CPU CHILD_CPU]
//
// prints "size SIZE", then one round-trip time in nanoseconds per line (like rstream-cperf).
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct slot {
    _Alignas(64) _Atomic uint64_t sequence;
};

static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// One direction's message: the bytes, then the sequence on a line of its own after them (for
// sizes up to 56 the bytes and the sequence share one 64-byte line).
static char *bytes_of(char *base, size_t size) { return base; }
static _Atomic uint64_t *sequence_of(char *base, size_t size) {
    size_t offset = size <= 56 ? 56 : (size + 63) / 64 * 64;
    return (_Atomic uint64_t *)(base + offset);
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: rstream-shmfloor SIZE WARMUP MEASURED [PARENT_CPU CHILD_CPU]\n"); return 2; }
    size_t size = strtoul(argv[1], 0, 10);
    long warmup = strtol(argv[2], 0, 10), measured = strtol(argv[3], 0, 10);
    int parent_cpu = argc > 5 ? atoi(argv[4]) : -1, child_cpu = argc > 5 ? atoi(argv[5]) : -1;
    size_t half = (size + 128 + 4095) / 4096 * 4096;
    char *shared = mmap(0, 2 * half, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) { perror("mmap"); return 1; }
    char *ping = shared, *pong = shared + half;
    char *local = malloc(size + 1);
    memset(local, 0x5A, size);
    long total = warmup + measured;
    pid_t child = fork();
    if (child == 0) {
        pin(child_cpu);
        for (long i = 1; i <= total; i++) {
            while (atomic_load_explicit(sequence_of(ping, size), memory_order_acquire) != (uint64_t)i) {}
            memcpy(local, bytes_of(ping, size), size);
            memcpy(bytes_of(pong, size), local, size);
            atomic_store_explicit(sequence_of(pong, size), (uint64_t)i, memory_order_release);
        }
        _exit(0);
    }
    pin(parent_cpu);
    uint64_t *samples = malloc(sizeof(uint64_t) * (size_t)(measured > 0 ? measured : 1));
    for (long i = 1; i <= total; i++) {
        uint64_t start = now_ns();
        memcpy(bytes_of(ping, size), local, size);
        atomic_store_explicit(sequence_of(ping, size), (uint64_t)i, memory_order_release);
        while (atomic_load_explicit(sequence_of(pong, size), memory_order_acquire) != (uint64_t)i) {}
        memcpy(local, bytes_of(pong, size), size);
        if (i > warmup) samples[i - warmup - 1] = now_ns() - start;
    }
    waitpid(child, 0, 0);
    printf("size %zu\n", size);
    for (long i = 0; i < measured; i++) printf("%llu\n", (unsigned long long)samples[i]);
    return 0;
}
