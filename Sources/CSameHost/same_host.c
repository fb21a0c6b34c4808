#define _GNU_SOURCE
#include "same_host.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int rs_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING); }

int rs_seal(int fd, int forbid_future_writes) {
    int seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL | (forbid_future_writes ? F_SEAL_FUTURE_WRITE : 0);
    return fcntl(fd, F_ADD_SEALS, seals);
}

int rs_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }
int rs_seals_forbid_shrink(int seals) { return (seals & F_SEAL_SHRINK) != 0; }

enum { max_passed = 8 };

long rs_send_with_descriptors(int socket, const void *bytes, size_t length, const int *descriptors, int count) {
    if (count < 0 || count > max_passed) { errno = EINVAL; return -1; }
    char control[CMSG_SPACE(sizeof(int) * max_passed)];
    memset(control, 0, sizeof control);
    struct iovec iov = { .iov_base = (void *)bytes, .iov_len = length };
    struct msghdr message = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (count > 0) {
        message.msg_control = control;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * count);
        memcpy(CMSG_DATA(header), descriptors, sizeof(int) * count);
    }
    return sendmsg(socket, &message, MSG_NOSIGNAL);
}

long rs_receive_with_descriptors(int socket, void *bytes, size_t capacity, int *descriptors, int max_descriptors,
                                 int *count, int *truncated, int dontwait) {
    char control[CMSG_SPACE(sizeof(int) * max_passed)];
    struct iovec iov = { .iov_base = bytes, .iov_len = capacity };
    struct msghdr message = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control };
    *count = 0;
    *truncated = 0;
    long n = recvmsg(socket, &message, MSG_CMSG_CLOEXEC | (dontwait ? MSG_DONTWAIT : 0));
    if (n < 0) return n;
    if (message.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) *truncated = 1;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        int carried = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *passed = (int *)CMSG_DATA(header);
        for (int i = 0; i < carried; i++) {
            if (*count < max_descriptors) descriptors[(*count)++] = passed[i];
            else { close(passed[i]); *truncated = 1; }
        }
    }
    return n;
}

int rs_accept_nonblocking(int socket) { return accept4(socket, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); }

long rs_ring_doorbell(int fd) {
    char one = 1;
    return send(fd, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}

int rs_drain_doorbell(int fd) {
    char bytes[64];
    int rings = 0;
    while (rings < 1 << 16 && recv(fd, bytes, sizeof bytes, MSG_DONTWAIT) > 0) rings++;
    return rings;
}

int rs_peer_hung_up(int fd) {
    struct pollfd look = { .fd = fd, .events = POLLRDHUP };
    if (poll(&look, 1, 0) != 1) return 0;
    return (look.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

void rs_park_forever(void) {
    /* On this thread's stack, which outlives an unload of this library: a word in the
     * library's own data would be unmapped with it, and the restarted wait would fail with
     * EFAULT and return into the unmapped code. */
    volatile int never = 0;
    for (;;) syscall(SYS_futex, &never, (long)FUTEX_WAIT_PRIVATE, 0L, NULL, NULL, 0L);
}

int rs_thread_id(void) { return (int)syscall(SYS_gettid); }

int rs_thread_waits_on_futex(int tid) {
    char path[64], text[128];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return -1;
    text[n] = 0;
    long number = -1;
    unsigned long address = 0, operation = 0, value = 1;
    if (sscanf(text, "%ld 0x%lx 0x%lx 0x%lx", &number, &address, &operation, &value) != 4) return 0;
    return number == SYS_futex && operation == FUTEX_WAIT_PRIVATE && value == 0;
}

long rs_peer_uid(int socket) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    return (long)credentials.uid;
}
