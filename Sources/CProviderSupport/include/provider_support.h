#ifndef RSTREAM_PROVIDER_SUPPORT_H
#define RSTREAM_PROVIDER_SUPPORT_H

// What the rstream provider answers for the calls a socket endpoint does not have. Every slot
// of every table the provider hands to libfabric is filled, so that a C caller reaching for an
// operation that does not apply gets -FI_ENOSYS instead of a jump through a null pointer.

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>
#include <rdma/fi_atomic.h>
#include <rdma/fi_collective.h>
#include <rdma/fi_errno.h>
#include <rdma/providers/fi_prov.h>

struct fi_ops_rma *rs_no_rma_ops(void);
struct fi_ops_tagged *rs_no_tagged_ops(void);
struct fi_ops_atomic *rs_no_atomic_ops(void);
struct fi_ops_collective *rs_no_collective_ops(void);
struct fi_ops_mr *rs_no_mr_ops(void);

int rs_no_ops_open(struct fid *fid, const char *name, uint64_t flags, void **ops, void *context);
int rs_no_tostr(const struct fid *fid, char *buf, size_t len);
int rs_no_ops_set(struct fid *fid, const char *name, uint64_t flags, void *ops, void *context);
int rs_no_bind(struct fid *fid, struct fid *bfid, uint64_t flags);
int rs_no_control(struct fid *fid, int command, void *arg);

int rs_no_wait_open(struct fid_fabric *fabric, struct fi_wait_attr *attr, struct fid_wait **waitset);

int rs_no_av_open(struct fid_domain *domain, struct fi_av_attr *attr, struct fid_av **av, void *context);
int rs_no_cq_open(struct fid_domain *domain, struct fi_cq_attr *attr, struct fid_cq **cq, void *context);
int rs_no_scalable_ep(struct fid_domain *domain, struct fi_info *info, struct fid_ep **sep, void *context);
int rs_no_cntr_open(struct fid_domain *domain, struct fi_cntr_attr *attr, struct fid_cntr **cntr, void *context);
int rs_no_poll_open(struct fid_domain *domain, struct fi_poll_attr *attr, struct fid_poll **pollset);
int rs_no_stx_ctx(struct fid_domain *domain, struct fi_tx_attr *attr, struct fid_stx **stx, void *context);
int rs_no_srx_ctx(struct fid_domain *domain, struct fi_rx_attr *attr, struct fid_ep **rx_ep, void *context);
int rs_no_query_atomic(struct fid_domain *domain, enum fi_datatype datatype, enum fi_op op,
                       struct fi_atomic_attr *attr, uint64_t flags);
int rs_no_query_collective(struct fid_domain *domain, enum fi_collective_op coll,
                           struct fi_collective_attr *attr, uint64_t flags);

ssize_t rs_no_cancel(fid_t fid, void *context);
int rs_no_tx_ctx(struct fid_ep *sep, int index, struct fi_tx_attr *attr, struct fid_ep **tx_ep, void *context);
int rs_no_rx_ctx(struct fid_ep *sep, int index, struct fi_rx_attr *attr, struct fid_ep **rx_ep, void *context);
ssize_t rs_no_size_left(struct fid_ep *ep);

int rs_no_setname(fid_t fid, void *addr, size_t addrlen);
int rs_no_getpeer(struct fid_ep *ep, void *addr, size_t *addrlen);
int rs_no_connect(struct fid_ep *ep, const void *addr, const void *param, size_t paramlen);
int rs_no_listen(struct fid_pep *pep);
int rs_no_accept(struct fid_ep *ep, const void *param, size_t paramlen);
int rs_no_reject(struct fid_pep *pep, fid_t handle, const void *param, size_t paramlen);
int rs_no_shutdown(struct fid_ep *ep, uint64_t flags);
int rs_no_join(struct fid_ep *ep, const void *addr, uint64_t flags, struct fid_mc **mc, void *context);

ssize_t rs_no_msg_recv(struct fid_ep *ep, void *buf, size_t len, void *desc, fi_addr_t src_addr, void *context);
ssize_t rs_no_msg_recvv(struct fid_ep *ep, const struct iovec *iov, void **desc, size_t count,
                        fi_addr_t src_addr, void *context);
ssize_t rs_no_msg_recvmsg(struct fid_ep *ep, const struct fi_msg *msg, uint64_t flags);
ssize_t rs_no_msg_send(struct fid_ep *ep, const void *buf, size_t len, void *desc, fi_addr_t dest_addr, void *context);
ssize_t rs_no_msg_sendv(struct fid_ep *ep, const struct iovec *iov, void **desc, size_t count,
                        fi_addr_t dest_addr, void *context);
ssize_t rs_no_msg_sendmsg(struct fid_ep *ep, const struct fi_msg *msg, uint64_t flags);
ssize_t rs_no_msg_inject(struct fid_ep *ep, const void *buf, size_t len, fi_addr_t dest_addr);
ssize_t rs_no_msg_senddata(struct fid_ep *ep, const void *buf, size_t len, void *desc, uint64_t data,
                           fi_addr_t dest_addr, void *context);
ssize_t rs_no_msg_injectdata(struct fid_ep *ep, const void *buf, size_t len, uint64_t data, fi_addr_t dest_addr);


#endif
