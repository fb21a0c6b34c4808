/* Helpers shared by the C programs that test the rstream provider through libfabric's own API.
 * Every failure prints what failed and exits non-zero, so a test sees it. */
#ifndef RSTREAM_C_COMMON_H
#define RSTREAM_C_COMMON_H

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>
#include <rdma/fi_atomic.h>

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(call)                                                                          \
	do {                                                                                 \
		long rc_ = (long)(call);                                                     \
		if (rc_ < 0) {                                                               \
			fprintf(stderr, "%s:%d: %s = %ld (%s)\n", __FILE__, __LINE__, #call, \
				rc_, fi_strerror((int)-rc_));                                \
			exit(1);                                                             \
		}                                                                            \
	} while (0)

#define EXPECT(cond, ...)                                                    \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "%s:%d: expected %s: ", __FILE__,    \
				__LINE__, #cond);                            \
			fprintf(stderr, __VA_ARGS__);                        \
			fprintf(stderr, "\n");                               \
			exit(1);                                             \
		}                                                            \
	} while (0)

struct fabric_objects {
	struct fi_info *info;
	struct fid_fabric *fabric;
	struct fid_domain *domain;
	struct fid_eq *eq;
};

/* fi_getinfo with hints of FI_EP_SOCK_STREAM alone (plus the protocol when iwarp is set). */
static inline struct fi_info *find_stream(const char *node, const char *service, uint64_t flags, int iwarp)
{
	struct fi_info *hints = fi_allocinfo(), *info = NULL;
	hints->ep_attr->type = FI_EP_SOCK_STREAM;
	if (iwarp)
		hints->ep_attr->protocol = FI_PROTO_IWARP;
	hints->addr_format = FI_SOCKADDR_IN;
	CHECK(fi_getinfo(FI_VERSION(1, 17), node, service, flags, hints, &info));
	EXPECT(!strcmp(info->fabric_attr->prov_name, "rstream"), "provider %s", info->fabric_attr->prov_name);
	EXPECT(info->ep_attr->type == FI_EP_SOCK_STREAM, "type %d", info->ep_attr->type);
	/* RSTREAM_PROVIDER names the core (or shm) the first entry must be over. */
	const char *core = getenv("RSTREAM_PROVIDER");
	if (core && *core)
		EXPECT(!strncmp(info->fabric_attr->name, core, strlen(core)) && info->fabric_attr->name[strlen(core)] == ':',
		       "fabric %s over %s", info->fabric_attr->name, core);
	fi_freeinfo(hints);
	return info;
}

static inline void open_fabric(struct fabric_objects *f, struct fi_info *info)
{
	struct fi_eq_attr attr = { .size = 64, .wait_obj = FI_WAIT_FD };
	f->info = info;
	CHECK(fi_fabric(info->fabric_attr, &f->fabric, NULL));
	CHECK(fi_domain(f->fabric, info, &f->domain, NULL));
	CHECK(fi_eq_open(f->fabric, &attr, &f->eq, NULL));
}

static inline void close_fabric(struct fabric_objects *f)
{
	CHECK(fi_close(&f->eq->fid));
	CHECK(fi_close(&f->domain->fid));
	CHECK(fi_close(&f->fabric->fid));
	fi_freeinfo(f->info);
}

/* Reads the next event, waiting up to 20 s; returns its type and fills entry. */
static inline uint32_t next_event(struct fid_eq *eq, struct fi_eq_cm_entry *entry, size_t size)
{
	uint32_t event;
	ssize_t n = fi_eq_sread(eq, &event, entry, size, 20000, 0);
	if (n == -FI_EAVAIL) {
		struct fi_eq_err_entry err = { 0 };
		fi_eq_readerr(eq, &err, 0);
		fprintf(stderr, "event queue error %d (%s), %zu bytes of data\n", err.err, fi_strerror(err.err),
			err.err_data_size);
		exit(1);
	}
	CHECK(n);
	return event;
}

/* A passive endpoint listening on RSTREAM_C_LISTEN (default 127.0.0.1; "wildcard": 0.0.0.0
 * named with fi_setname), any port, with a backlog of 16; prints "port N" on stdout. */
static inline struct fid_pep *listen_any(struct fabric_objects *f, int iwarp, int *port_out)
{
	struct fid_pep *pep;
	struct sockaddr_in addr;
	size_t len = sizeof addr;
	const char *where = getenv("RSTREAM_C_LISTEN");
	int wildcard = where && !strcmp(where, "wildcard");
	int backlog = 16;
	open_fabric(f, find_stream(where && !wildcard ? where : "127.0.0.1", "0", FI_SOURCE, iwarp));
	CHECK(fi_passive_ep(f->fabric, f->info, &pep, NULL));
	CHECK(fi_pep_bind(pep, &f->eq->fid, 0));
	CHECK(fi_control(&pep->fid, FI_BACKLOG, &backlog));
	if (wildcard) {
		struct sockaddr_in any = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY) };
		CHECK(fi_setname(&pep->fid, &any, sizeof any));
	}
	CHECK(fi_listen(pep));
	CHECK(fi_getname(&pep->fid, &addr, &len));
	*port_out = ntohs(addr.sin_port);
	EXPECT(*port_out != 0, "a real port after fi_listen");
	if (wildcard)
		EXPECT(addr.sin_addr.s_addr == htonl(INADDR_ANY), "listening on the wildcard address");
	printf("port %d\n", *port_out);
	fflush(stdout);
	return pep;
}

/* Takes the next FI_CONNREQ and accepts it (with param as connection data). */
static inline struct fid_ep *accept_next(struct fabric_objects *f, const void *param, size_t paramlen)
{
	char buffer[sizeof(struct fi_eq_cm_entry) + 256];
	struct fi_eq_cm_entry *entry = (void *)buffer;
	struct fid_ep *ep;
	uint32_t event = next_event(f->eq, entry, sizeof buffer);
	EXPECT(event == FI_CONNREQ, "event %u", event);
	CHECK(fi_endpoint(f->domain, entry->info, &ep, NULL));
	CHECK(fi_ep_bind(ep, &f->eq->fid, 0));
	CHECK(fi_enable(ep));
	CHECK(fi_accept(ep, param, paramlen));
	fi_freeinfo(entry->info);
	event = next_event(f->eq, entry, sizeof buffer);
	EXPECT(event == FI_CONNECTED && entry->fid == &ep->fid, "event %u", event);
	return ep;
}

/* Connects to host:port; returns the endpoint once FI_CONNECTED arrived (its data in reply). */
static inline struct fid_ep *connect_to(struct fabric_objects *f, const char *host, const char *port, int iwarp,
					const void *param, size_t paramlen, char *reply, size_t *replylen)
{
	char buffer[sizeof(struct fi_eq_cm_entry) + 256];
	struct fi_eq_cm_entry *entry = (void *)buffer;
	struct fid_ep *ep;
	ssize_t n;
	uint32_t event;
	open_fabric(f, find_stream(host, port, 0, iwarp));
	CHECK(fi_endpoint(f->domain, f->info, &ep, NULL));
	CHECK(fi_ep_bind(ep, &f->eq->fid, 0));
	CHECK(fi_enable(ep));
	CHECK(fi_connect(ep, NULL, param, paramlen));
	n = fi_eq_sread(f->eq, &event, entry, sizeof buffer, 20000, 0);
	CHECK(n);
	EXPECT(event == FI_CONNECTED && entry->fid == &ep->fid, "event %u", event);
	if (reply) {
		*replylen = (size_t)n - sizeof *entry;
		memcpy(reply, entry->data, *replylen);
	}
	return ep;
}

/* Sleeps on the endpoint's FI_GETWAIT descriptor after fi_trywait says it may (at most 100 ms). */
static inline void wait_endpoint(struct fabric_objects *f, struct fid_ep *ep)
{
	int fd;
	struct fid *fids[1] = { &ep->fid };
	CHECK(fi_control(&ep->fid, FI_GETWAIT, &fd));
	if (fi_trywait(f->fabric, fids, 1) == FI_SUCCESS) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, 100);
	}
}

/* Sends all of buf, waiting when the stream is full. */
static inline void send_all(struct fabric_objects *f, struct fid_ep *ep, const void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = fi_send(ep, (const char *)buf + done, len - done, NULL, 0, NULL);
		if (n == -FI_EAGAIN) {
			wait_endpoint(f, ep);
			continue;
		}
		CHECK(n);
		done += (size_t)n;
	}
}

/* Receives up to len bytes, waiting for at least one; 0 at end of stream. */
static inline size_t receive_some(struct fabric_objects *f, struct fid_ep *ep, void *buf, size_t len)
{
	for (;;) {
		ssize_t n = fi_recv(ep, buf, len, NULL, 0, NULL);
		if (n == -FI_EAGAIN) {
			wait_endpoint(f, ep);
			continue;
		}
		CHECK(n);
		return (size_t)n;
	}
}

/* The byte at position pos of the test stream seeded with seed. */
static inline uint8_t pattern(uint64_t seed, uint64_t pos)
{
	uint64_t x = (pos >> 3) * 0x9E3779B97F4A7C15ull + seed;
	x ^= x >> 29;
	return (uint8_t)(x >> (8 * (pos & 7)));
}

static inline uint64_t fnv1a(uint64_t hash, const uint8_t *bytes, size_t len)
{
	for (size_t i = 0; i < len; i++)
		hash = (hash ^ bytes[i]) * 0x100000001b3ull;
	return hash;
}

#define FNV_START 0xcbf29ce484222325ull

#endif
