#include "provider_support.h"

#define NOSYS { return -FI_ENOSYS; }

int rs_no_ops_open(struct fid *f, const char *n, uint64_t fl, void **o, void *c) NOSYS
int rs_no_tostr(const struct fid *f, char *b, size_t l) NOSYS
int rs_no_ops_set(struct fid *f, const char *n, uint64_t fl, void *o, void *c) NOSYS
int rs_no_bind(struct fid *f, struct fid *b, uint64_t fl) NOSYS
int rs_no_control(struct fid *f, int cmd, void *a) NOSYS

int rs_no_wait_open(struct fid_fabric *f, struct fi_wait_attr *a, struct fid_wait **w) NOSYS

int rs_no_av_open(struct fid_domain *d, struct fi_av_attr *a, struct fid_av **av, void *c) NOSYS
int rs_no_cq_open(struct fid_domain *d, struct fi_cq_attr *a, struct fid_cq **cq, void *c) NOSYS
int rs_no_scalable_ep(struct fid_domain *d, struct fi_info *i, struct fid_ep **s, void *c) NOSYS
int rs_no_cntr_open(struct fid_domain *d, struct fi_cntr_attr *a, struct fid_cntr **n, void *c) NOSYS
int rs_no_poll_open(struct fid_domain *d, struct fi_poll_attr *a, struct fid_poll **p) NOSYS
int rs_no_stx_ctx(struct fid_domain *d, struct fi_tx_attr *a, struct fid_stx **s, void *c) NOSYS
int rs_no_srx_ctx(struct fid_domain *d, struct fi_rx_attr *a, struct fid_ep **r, void *c) NOSYS
int rs_no_query_atomic(struct fid_domain *d, enum fi_datatype t, enum fi_op o, struct fi_atomic_attr *a, uint64_t f) NOSYS
int rs_no_query_collective(struct fid_domain *d, enum fi_collective_op o, struct fi_collective_attr *a, uint64_t f) NOSYS

ssize_t rs_no_cancel(fid_t f, void *c) NOSYS
int rs_no_tx_ctx(struct fid_ep *s, int i, struct fi_tx_attr *a, struct fid_ep **t, void *c) NOSYS
int rs_no_rx_ctx(struct fid_ep *s, int i, struct fi_rx_attr *a, struct fid_ep **r, void *c) NOSYS
ssize_t rs_no_size_left(struct fid_ep *e) NOSYS

int rs_no_setname(fid_t f, void *a, size_t l) NOSYS
int rs_no_getpeer(struct fid_ep *e, void *a, size_t *l) NOSYS
int rs_no_connect(struct fid_ep *e, const void *a, const void *p, size_t l) NOSYS
int rs_no_listen(struct fid_pep *p) NOSYS
int rs_no_accept(struct fid_ep *e, const void *p, size_t l) NOSYS
int rs_no_reject(struct fid_pep *p, fid_t h, const void *d, size_t l) NOSYS
int rs_no_shutdown(struct fid_ep *e, uint64_t f) NOSYS
int rs_no_join(struct fid_ep *e, const void *a, uint64_t f, struct fid_mc **m, void *c) NOSYS

ssize_t rs_no_msg_recv(struct fid_ep *e, void *b, size_t l, void *d, fi_addr_t a, void *c) NOSYS
ssize_t rs_no_msg_recvv(struct fid_ep *e, const struct iovec *v, void **d, size_t n, fi_addr_t a, void *c) NOSYS
ssize_t rs_no_msg_recvmsg(struct fid_ep *e, const struct fi_msg *m, uint64_t f) NOSYS
ssize_t rs_no_msg_send(struct fid_ep *e, const void *b, size_t l, void *d, fi_addr_t a, void *c) NOSYS
ssize_t rs_no_msg_sendv(struct fid_ep *e, const struct iovec *v, void **d, size_t n, fi_addr_t a, void *c) NOSYS
ssize_t rs_no_msg_sendmsg(struct fid_ep *e, const struct fi_msg *m, uint64_t f) NOSYS
ssize_t rs_no_msg_inject(struct fid_ep *e, const void *b, size_t l, fi_addr_t a) NOSYS
ssize_t rs_no_msg_senddata(struct fid_ep *e, const void *b, size_t l, void *d, uint64_t x, fi_addr_t a, void *c) NOSYS
ssize_t rs_no_msg_injectdata(struct fid_ep *e, const void *b, size_t l, uint64_t x, fi_addr_t a) NOSYS

static ssize_t no_rma_read(struct fid_ep *e, void *b, size_t l, void *d, fi_addr_t s, uint64_t a, uint64_t k, void *c) NOSYS
static ssize_t no_rma_readv(struct fid_ep *e, const struct iovec *v, void **d, size_t n, fi_addr_t s, uint64_t a,
                            uint64_t k, void *c) NOSYS
static ssize_t no_rma_readmsg(struct fid_ep *e, const struct fi_msg_rma *m, uint64_t f) NOSYS
static ssize_t no_rma_write(struct fid_ep *e, const void *b, size_t l, void *d, fi_addr_t s, uint64_t a, uint64_t k,
                            void *c) NOSYS
static ssize_t no_rma_writev(struct fid_ep *e, const struct iovec *v, void **d, size_t n, fi_addr_t s, uint64_t a,
                             uint64_t k, void *c) NOSYS
static ssize_t no_rma_writemsg(struct fid_ep *e, const struct fi_msg_rma *m, uint64_t f) NOSYS
static ssize_t no_rma_inject(struct fid_ep *e, const void *b, size_t l, fi_addr_t s, uint64_t a, uint64_t k) NOSYS
static ssize_t no_rma_writedata(struct fid_ep *e, const void *b, size_t l, void *d, uint64_t x, fi_addr_t s,
                                uint64_t a, uint64_t k, void *c) NOSYS
static ssize_t no_rma_injectdata(struct fid_ep *e, const void *b, size_t l, uint64_t x, fi_addr_t s, uint64_t a,
                                 uint64_t k) NOSYS

static struct fi_ops_rma no_rma_ops = {
    .size = sizeof(struct fi_ops_rma),
    .read = no_rma_read, .readv = no_rma_readv, .readmsg = no_rma_readmsg,
    .write = no_rma_write, .writev = no_rma_writev, .writemsg = no_rma_writemsg,
    .inject = no_rma_inject, .writedata = no_rma_writedata, .injectdata = no_rma_injectdata,
};

static ssize_t no_tag_recv(struct fid_ep *e, void *b, size_t l, void *d, fi_addr_t s, uint64_t t, uint64_t i,
                           void *c) NOSYS
static ssize_t no_tag_recvv(struct fid_ep *e, const struct iovec *v, void **d, size_t n, fi_addr_t s, uint64_t t,
                            uint64_t i, void *c) NOSYS
static ssize_t no_tag_recvmsg(struct fid_ep *e, const struct fi_msg_tagged *m, uint64_t f) NOSYS
static ssize_t no_tag_send(struct fid_ep *e, const void *b, size_t l, void *d, fi_addr_t s, uint64_t t, void *c) NOSYS
static ssize_t no_tag_sendv(struct fid_ep *e, const struct iovec *v, void **d, size_t n, fi_addr_t s, uint64_t t,
                            void *c) NOSYS
static ssize_t no_tag_sendmsg(struct fid_ep *e, const struct fi_msg_tagged *m, uint64_t f) NOSYS
static ssize_t no_tag_inject(struct fid_ep *e, const void *b, size_t l, fi_addr_t s, uint64_t t) NOSYS
static ssize_t no_tag_senddata(struct fid_ep *e, const void *b, size_t l, void *d, uint64_t x, fi_addr_t s,
                               uint64_t t, void *c) NOSYS
static ssize_t no_tag_injectdata(struct fid_ep *e, const void *b, size_t l, uint64_t x, fi_addr_t s, uint64_t t) NOSYS

static struct fi_ops_tagged no_tagged_ops = {
    .size = sizeof(struct fi_ops_tagged),
    .recv = no_tag_recv, .recvv = no_tag_recvv, .recvmsg = no_tag_recvmsg,
    .send = no_tag_send, .sendv = no_tag_sendv, .sendmsg = no_tag_sendmsg,
    .inject = no_tag_inject, .senddata = no_tag_senddata, .injectdata = no_tag_injectdata,
};

static ssize_t no_atomic_write(struct fid_ep *e, const void *b, size_t n, void *d, fi_addr_t s, uint64_t a,
                               uint64_t k, enum fi_datatype t, enum fi_op o, void *c) NOSYS
static ssize_t no_atomic_writev(struct fid_ep *e, const struct fi_ioc *v, void **d, size_t n, fi_addr_t s,
                                uint64_t a, uint64_t k, enum fi_datatype t, enum fi_op o, void *c) NOSYS
static ssize_t no_atomic_writemsg(struct fid_ep *e, const struct fi_msg_atomic *m, uint64_t f) NOSYS
static ssize_t no_atomic_inject(struct fid_ep *e, const void *b, size_t n, fi_addr_t s, uint64_t a, uint64_t k,
                                enum fi_datatype t, enum fi_op o) NOSYS
static ssize_t no_atomic_readwrite(struct fid_ep *e, const void *b, size_t n, void *d, void *r, void *rd,
                                   fi_addr_t s, uint64_t a, uint64_t k, enum fi_datatype t, enum fi_op o,
                                   void *c) NOSYS
static ssize_t no_atomic_readwritev(struct fid_ep *e, const struct fi_ioc *v, void **d, size_t n,
                                    struct fi_ioc *rv, void **rd, size_t rn, fi_addr_t s, uint64_t a, uint64_t k,
                                    enum fi_datatype t, enum fi_op o, void *c) NOSYS
static ssize_t no_atomic_readwritemsg(struct fid_ep *e, const struct fi_msg_atomic *m, struct fi_ioc *rv,
                                      void **rd, size_t rn, uint64_t f) NOSYS
static ssize_t no_atomic_compwrite(struct fid_ep *e, const void *b, size_t n, void *d, const void *cmp, void *cd,
                                   void *r, void *rd, fi_addr_t s, uint64_t a, uint64_t k, enum fi_datatype t,
                                   enum fi_op o, void *c) NOSYS
static ssize_t no_atomic_compwritev(struct fid_ep *e, const struct fi_ioc *v, void **d, size_t n,
                                    const struct fi_ioc *cv, void **cd, size_t cn, struct fi_ioc *rv, void **rd,
                                    size_t rn, fi_addr_t s, uint64_t a, uint64_t k, enum fi_datatype t,
                                    enum fi_op o, void *c) NOSYS
static ssize_t no_atomic_compwritemsg(struct fid_ep *e, const struct fi_msg_atomic *m, const struct fi_ioc *cv,
                                      void **cd, size_t cn, struct fi_ioc *rv, void **rd, size_t rn,
                                      uint64_t f) NOSYS
static int no_atomic_valid(struct fid_ep *e, enum fi_datatype t, enum fi_op o, size_t *n) NOSYS

static struct fi_ops_atomic no_atomic_ops = {
    .size = sizeof(struct fi_ops_atomic),
    .write = no_atomic_write, .writev = no_atomic_writev, .writemsg = no_atomic_writemsg,
    .inject = no_atomic_inject, .readwrite = no_atomic_readwrite, .readwritev = no_atomic_readwritev,
    .readwritemsg = no_atomic_readwritemsg, .compwrite = no_atomic_compwrite,
    .compwritev = no_atomic_compwritev, .compwritemsg = no_atomic_compwritemsg,
    .writevalid = no_atomic_valid, .readwritevalid = no_atomic_valid, .compwritevalid = no_atomic_valid,
};

static ssize_t no_coll_barrier(struct fid_ep *e, fi_addr_t a, void *c) NOSYS
static ssize_t no_coll_broadcast(struct fid_ep *e, void *b, size_t n, void *d, fi_addr_t a, fi_addr_t r,
                                 enum fi_datatype t, uint64_t f, void *c) NOSYS
static ssize_t no_coll_alltoall(struct fid_ep *e, const void *b, size_t n, void *d, void *r, void *rd, fi_addr_t a,
                                enum fi_datatype t, uint64_t f, void *c) NOSYS
static ssize_t no_coll_allreduce(struct fid_ep *e, const void *b, size_t n, void *d, void *r, void *rd,
                                 fi_addr_t a, enum fi_datatype t, enum fi_op o, uint64_t f, void *c) NOSYS
static ssize_t no_coll_allgather(struct fid_ep *e, const void *b, size_t n, void *d, void *r, void *rd,
                                 fi_addr_t a, enum fi_datatype t, uint64_t f, void *c) NOSYS
static ssize_t no_coll_reduce_scatter(struct fid_ep *e, const void *b, size_t n, void *d, void *r, void *rd,
                                      fi_addr_t a, enum fi_datatype t, enum fi_op o, uint64_t f, void *c) NOSYS
static ssize_t no_coll_reduce(struct fid_ep *e, const void *b, size_t n, void *d, void *r, void *rd, fi_addr_t a,
                              fi_addr_t ra, enum fi_datatype t, enum fi_op o, uint64_t f, void *c) NOSYS
static ssize_t no_coll_scatter(struct fid_ep *e, const void *b, size_t n, void *d, void *r, void *rd, fi_addr_t a,
                               fi_addr_t ra, enum fi_datatype t, uint64_t f, void *c) NOSYS
static ssize_t no_coll_msg(struct fid_ep *e, const struct fi_msg_collective *m, struct fi_ioc *rv, void **rd,
                           size_t rn, uint64_t f) NOSYS
static ssize_t no_coll_barrier2(struct fid_ep *e, fi_addr_t a, uint64_t f, void *c) NOSYS

static struct fi_ops_collective no_collective_ops = {
    .size = sizeof(struct fi_ops_collective),
    .barrier = no_coll_barrier, .broadcast = no_coll_broadcast, .alltoall = no_coll_alltoall,
    .allreduce = no_coll_allreduce, .allgather = no_coll_allgather, .reduce_scatter = no_coll_reduce_scatter,
    .reduce = no_coll_reduce, .scatter = no_coll_scatter, .gather = no_coll_scatter, .msg = no_coll_msg,
    .barrier2 = no_coll_barrier2,
};

static int no_mr_reg(struct fid *f, const void *b, size_t l, uint64_t a, uint64_t o, uint64_t k, uint64_t fl,
                     struct fid_mr **m, void *c) NOSYS
static int no_mr_regv(struct fid *f, const struct iovec *v, size_t n, uint64_t a, uint64_t o, uint64_t k,
                      uint64_t fl, struct fid_mr **m, void *c) NOSYS
static int no_mr_regattr(struct fid *f, const struct fi_mr_attr *a, uint64_t fl, struct fid_mr **m) NOSYS

static struct fi_ops_mr no_mr_ops = {
    .size = sizeof(struct fi_ops_mr), .reg = no_mr_reg, .regv = no_mr_regv, .regattr = no_mr_regattr,
};
struct fi_ops_rma *rs_no_rma_ops(void) { return &no_rma_ops; }
struct fi_ops_tagged *rs_no_tagged_ops(void) { return &no_tagged_ops; }
struct fi_ops_atomic *rs_no_atomic_ops(void) { return &no_atomic_ops; }
struct fi_ops_collective *rs_no_collective_ops(void) { return &no_collective_ops; }
struct fi_ops_mr *rs_no_mr_ops(void) { return &no_mr_ops; }
