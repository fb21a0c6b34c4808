/* rstream-cperf: RStream's round trip measured through its C face, the libfabric provider
 * (librstream-fi.so, found through FI_PROVIDER_PATH). `rstream perf` runs a server and a client
 * of it beside its own measurements, so that the cost of the fid tables shows as the difference
 * from the "rstream" row, which makes the same round trips through the Swift API.
 *
 *   rstream-cperf server [--cpu N]                 prints "port P", serves one connection
 *   rstream-cperf client HOST PORT SIZE:WARMUP:COUNT,... [--cpu N]
 *                                                  prints "size S" then one round trip (ns) per line
 *   rstream-cperf loop SIZE:WARMUP:COUNT,... [--cpu N]
 *                                                  both ends in this one thread (no wake-ups, no
 *                                                  second core): the same lines, for `rstream perf
 *                                                  --in-process`, whose Swift loop is the same
 *
 * Both sides busy-poll fi_send/fi_recv with the provider's defaults (32 KiB rings, 384 slots),
 * as the "rstream" row does through trySend/tryReceive. The wire is `rstream perf`'s: a 12-byte
 * header (mode 1 = echo, size, count; little-endian) and then count echoed messages. */
#define _GNU_SOURCE
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>

#include <arpa/inet.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(call)                                                                                    \
	do {                                                                                           \
		long rc_ = (long)(call);                                                               \
		if (rc_ < 0) {                                                                         \
			fprintf(stderr, "rstream-cperf: %s = %ld (%s)\n", #call, rc_, fi_strerror((int)-rc_)); \
			exit(1);                                                                       \
		}                                                                                      \
	} while (0)

struct objects {
	struct fi_info *info;
	struct fid_fabric *fabric;
	struct fid_domain *domain;
	struct fid_eq *eq;
};

static void open_objects(struct objects *o, const char *node, const char *service, uint64_t flags)
{
	struct fi_info *hints = fi_allocinfo();
	struct fi_eq_attr attr = { .size = 16, .wait_obj = FI_WAIT_FD };
	hints->ep_attr->type = FI_EP_SOCK_STREAM;
	hints->addr_format = FI_SOCKADDR_IN;
	hints->fabric_attr->prov_name = strdup("rstream");
	CHECK(fi_getinfo(FI_VERSION(1, 17), node, service, flags, hints, &o->info));
	fi_freeinfo(hints);
	CHECK(fi_fabric(o->info->fabric_attr, &o->fabric, NULL));
	CHECK(fi_domain(o->fabric, o->info, &o->domain, NULL));
	CHECK(fi_eq_open(o->fabric, &attr, &o->eq, NULL));
}

static uint32_t expect_event(struct objects *o, struct fi_eq_cm_entry *entry, size_t size)
{
	uint32_t event;
	ssize_t n = fi_eq_sread(o->eq, &event, entry, size, 20000, 0);
	if (n == -FI_EAVAIL) {
		struct fi_eq_err_entry err = { 0 };
		fi_eq_readerr(o->eq, &err, 0);
		fprintf(stderr, "rstream-cperf: connection failed: %s\n", fi_strerror(err.err));
		exit(1);
	}
	CHECK(n);
	return event;
}

static void send_exactly(struct fid_ep *ep, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = fi_send(ep, buf, len, NULL, 0, NULL);
		if (n == -FI_EAGAIN)
			continue;
		CHECK(n);
		buf += n;
		len -= (size_t)n;
	}
}

/* 0 at end of stream before any byte. */
static int receive_exactly(struct fid_ep *ep, char *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = fi_recv(ep, buf + got, len - got, NULL, 0, NULL);
		if (n == -FI_EAGAIN)
			continue;
		CHECK(n);
		if (n == 0) {
			if (got == 0)
				return 0;
			fprintf(stderr, "rstream-cperf: end of stream inside a message\n");
			exit(1);
		}
		got += (size_t)n;
	}
	return 1;
}

static void pin(int argc, char **argv)
{
	for (int i = 1; i + 1 < argc; i++) {
		if (!strcmp(argv[i], "--cpu")) {
			cpu_set_t set;
			CPU_ZERO(&set);
			CPU_SET(atoi(argv[i + 1]), &set);
			if (sched_setaffinity(0, sizeof set, &set) != 0)
				perror("rstream-cperf: sched_setaffinity");
		}
	}
}

/* A passive endpoint on 127.0.0.1, any port; its port as text in port. */
static struct fid_pep *listen_local(struct objects *o, char *port, size_t port_size)
{
	struct fid_pep *pep;
	struct sockaddr_in addr;
	size_t len = sizeof addr;
	open_objects(o, "127.0.0.1", "0", FI_SOURCE);
	CHECK(fi_passive_ep(o->fabric, o->info, &pep, NULL));
	CHECK(fi_pep_bind(pep, &o->eq->fid, 0));
	CHECK(fi_listen(pep));
	CHECK(fi_getname(&pep->fid, &addr, &len));
	snprintf(port, port_size, "%d", ntohs(addr.sin_port));
	return pep;
}

/* Takes the next FI_CONNREQ and accepts it; FI_CONNECTED follows on the queue. */
static struct fid_ep *accept_request(struct objects *o)
{
	char buffer[sizeof(struct fi_eq_cm_entry) + 256];
	struct fi_eq_cm_entry *entry = (void *)buffer;
	struct fid_ep *ep;
	if (expect_event(o, entry, sizeof buffer) != FI_CONNREQ)
		exit(1);
	CHECK(fi_endpoint(o->domain, entry->info, &ep, NULL));
	fi_freeinfo(entry->info);
	CHECK(fi_ep_bind(ep, &o->eq->fid, 0));
	CHECK(fi_accept(ep, NULL, 0));
	return ep;
}

static void expect_connected(struct objects *o, int count)
{
	char buffer[sizeof(struct fi_eq_cm_entry) + 256];
	while (count > 0)
		if (expect_event(o, (void *)buffer, sizeof buffer) == FI_CONNECTED)
			count--;
}

static int server(void)
{
	struct objects o;
	char port[16];
	struct fid_pep *pep = listen_local(&o, port, sizeof port);
	printf("port %s\n", port);
	fflush(stdout);
	struct fid_ep *ep = accept_request(&o);
	expect_connected(&o, 1);
	char *message = malloc(64 << 20);
	uint32_t header[3];
	while (receive_exactly(ep, (char *)header, sizeof header)) {
		for (uint32_t i = 0; i < header[2]; i++) {
			receive_exactly(ep, message, header[1]);
			send_exactly(ep, message, header[1]);
		}
	}
	fi_shutdown(ep, 0);
	fi_close(&ep->fid);
	fi_close(&pep->fid);
	return 0;
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* The round trips of a plan: near sends, and the message comes back to it (from another process
 * that echoes, or from far in this thread). Prints "size S" and one round trip (ns) per line. */
static int measure(struct fid_ep *near, struct fid_ep *far, char *plan, uint32_t max_size)
{
	char *message = malloc(max_size);
	memset(message, 0x5a, max_size);
	for (char *step = strtok(plan, ","); step; step = strtok(NULL, ",")) {
		uint32_t size;
		long warmup, count;
		if (sscanf(step, "%u:%ld:%ld", &size, &warmup, &count) != 3 || size > max_size || count < 1) {
			fprintf(stderr, "rstream-cperf: bad step \"%s\" (SIZE:WARMUP:COUNT, SIZE up to %u)\n", step, max_size);
			return 2;
		}
		uint64_t *samples = malloc(sizeof(uint64_t) * (size_t)count);
		if (!far) {
			uint32_t header[3] = { 1, size, (uint32_t)(warmup + count) };
			send_exactly(near, (const char *)header, sizeof header);
		}
		for (long i = 0; i < warmup + count; i++) {
			uint64_t start = now_ns();
			send_exactly(near, message, size);
			if (far) {
				receive_exactly(far, message, size);
				send_exactly(far, message, size);
			}
			receive_exactly(near, message, size);
			if (i >= warmup)
				samples[i - warmup] = now_ns() - start;
		}
		printf("size %u\n", size);
		for (long i = 0; i < count; i++)
			printf("%llu\n", (unsigned long long)samples[i]);
		free(samples);
	}
	free(message);
	return 0;
}

static struct fid_ep *connect_endpoint(struct objects *o, struct fi_info *info)
{
	struct fid_ep *ep;
	CHECK(fi_endpoint(o->domain, info, &ep, NULL));
	CHECK(fi_ep_bind(ep, &o->eq->fid, 0));
	CHECK(fi_connect(ep, NULL, NULL, 0));
	return ep;
}

static int client(const char *host, const char *port, char *plan)
{
	struct objects o;
	open_objects(&o, host, port, 0);
	struct fid_ep *ep = connect_endpoint(&o, o.info);
	expect_connected(&o, 1);
	int rc = measure(ep, NULL, plan, 64u << 20);
	CHECK(fi_shutdown(ep, 0));
	char end;
	receive_exactly(ep, &end, 1);
	fi_close(&ep->fid);
	return rc;
}

/* Both ends of one connection in this thread: a send, the other end's receive, its send, and
 * this end's receive make one round trip. */
static int loop(char *plan)
{
	struct objects o;
	struct fi_info *hints = fi_allocinfo(), *target;
	char port[16];
	struct fid_pep *pep = listen_local(&o, port, sizeof port);
	hints->ep_attr->type = FI_EP_SOCK_STREAM;
	hints->addr_format = FI_SOCKADDR_IN;
	hints->fabric_attr->prov_name = strdup("rstream");
	CHECK(fi_getinfo(FI_VERSION(1, 17), "127.0.0.1", port, 0, hints, &target));
	struct fid_ep *client = connect_endpoint(&o, target);
	struct fid_ep *server = accept_request(&o);
	expect_connected(&o, 2);
	int rc = measure(client, server, plan, 1u << 15);
	fi_close(&client->fid);
	fi_close(&server->fid);
	fi_close(&pep->fid);
	return rc;
}

int main(int argc, char **argv)
{
	pin(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "server"))
		return server();
	if (argc >= 3 && !strcmp(argv[1], "loop"))
		return loop(argv[2]);
	if (argc >= 5 && !strcmp(argv[1], "client"))
		return client(argv[2], argv[3], argv[4]);
	fprintf(stderr, "usage: rstream-cperf server [--cpu N] | client HOST PORT SIZE:WARMUP:COUNT,... [--cpu N] | loop SIZE:WARMUP:COUNT,... [--cpu N]\n");
	return 2;
}
