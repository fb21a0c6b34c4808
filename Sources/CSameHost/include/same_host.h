// The system calls of the same-host transport that Swift cannot call as they are: the cmsg
// macros of SCM_RIGHTS, and memfd_create with its seals (which need _GNU_SOURCE).
#pragma once
#include <stddef.h>
#include <stdint.h>

/// memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING): a descriptor, or -1 with errno.
int rs_memfd_create(const char *name);
/// fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW [| F_SEAL_FUTURE_WRITE] | F_SEAL_SEAL).
int rs_seal(int fd, int forbid_future_writes);
/// The seals of `fd` (fcntl F_GET_SEALS), or -1 with errno (EINVAL: not a memfd).
int rs_get_seals(int fd);
/// Whether `seals` forbids shrinking.
int rs_seals_forbid_shrink(int seals);
/// sendmsg(2) of `length` bytes with `count` descriptors as SCM_RIGHTS (MSG_NOSIGNAL): bytes
/// sent, or -1 with errno.
long rs_send_with_descriptors(int socket, const void *bytes, size_t length, const int *descriptors, int count);
/// recvmsg(2) (MSG_CMSG_CLOEXEC, and MSG_DONTWAIT when `dontwait`) of at most `capacity` bytes and
/// at most `max_descriptors` descriptors: bytes received (0: the peer closed), or -1 with errno.
/// `*count` gets the descriptors received; `*truncated` is set when bytes or descriptors were cut
/// (the kernel closes descriptors beyond the room; those received are returned either way).
long rs_receive_with_descriptors(int socket, void *bytes, size_t capacity, int *descriptors, int max_descriptors,
                                 int *count, int *truncated, int dontwait);
/// accept4(socket, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK), which needs _GNU_SOURCE.
int rs_accept_nonblocking(int socket);
/// Rings the peer over a connected set-up socket without ever blocking (MSG_DONTWAIT |
/// MSG_NOSIGNAL): 1 byte or -1/errno.
long rs_ring_doorbell(int fd);
/// Drains the rings waiting on a set-up socket without blocking (whatever they hold: a message
/// with descriptors has them closed by the kernel, unreceived); returns how many were taken.
int rs_drain_doorbell(int fd);
/// 1 when the peer of a connected socket has hung up (closed, shut down or died: POLLRDHUP,
/// POLLHUP or POLLERR, whatever rings still wait ahead of it), else 0.
int rs_peer_hung_up(int fd);
/// Waits for ever on a futex word on the caller's stack that nobody changes (the reactor's
/// thread, parked at exit); after an SA_RESTART signal handler (glibc's SIGSETXID) the kernel
/// runs libc's `syscall` instruction again, so the wait never returns here.
__attribute__((noreturn)) void rs_park_forever(void);
/// The calling thread's kernel id.
int rs_thread_id(void);
/// 1 when thread `tid` of this process is inside a private futex wait for the value 0, as
/// `rs_park_forever`'s (/proc/self/task/<tid>/syscall: not a lock's FUTEX_LOCK_PI), 0 when it
/// is not, -1 when that cannot be read.
int rs_thread_waits_on_futex(int tid);
/// The user id at the other end of a Unix socket (SO_PEERCRED), or -1.
long rs_peer_uid(int socket);
