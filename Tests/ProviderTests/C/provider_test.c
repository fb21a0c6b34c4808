/* The rstream provider exercised from C, through libfabric's standard calls only. Each
 * subcommand is one side of one test; the Swift test suite (ProviderCTests.swift) compiles this
 * file against the system's libfabric headers and runs the sides against the built provider
 * through FI_PROVIDER_PATH. Set RSTREAM_C_IWARP=1 for the iWarp protocol. */
#include "common.h"

#include <dlfcn.h>
#include <rdma/providers/fi_prov.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <time.h>

static int iwarp(void)
{
	const char *v = getenv("RSTREAM_C_IWARP");
	return v && *v == '1';
}

/* ---- greeting: hints of FI_EP_SOCK_STREAM alone, a message both ways, shut down ---- */

static const char client_greeting[] = "Hello from the client!";
static const char server_greeting[] = "Hello from the server!";

static void expect_end(struct fabric_objects *f, struct fid_ep *ep)
{
	char byte;
	size_t n = receive_some(f, ep, &byte, 1);
	EXPECT(n == 0, "end of stream, got %zu more bytes", n);
}

static int greeting_server(void)
{
	struct fabric_objects f;
	int port;
	char buf[64] = { 0 };
	struct fid_pep *pep = listen_any(&f, iwarp(), &port);
	struct fid_ep *ep = accept_next(&f, NULL, 0);
	size_t got = 0;
	while (got < sizeof client_greeting)
		got += receive_some(&f, ep, buf + got, sizeof client_greeting - got);
	EXPECT(!strcmp(buf, client_greeting), "greeting \"%s\"", buf);
	send_all(&f, ep, server_greeting, sizeof server_greeting);
	CHECK(fi_shutdown(ep, 0));
	expect_end(&f, ep);
	CHECK(fi_close(&ep->fid));
	CHECK(fi_close(&pep->fid));
	close_fabric(&f);
	printf("server ok\n");
	return 0;
}

static int greeting_client(const char *host, const char *port)
{
	struct fabric_objects f;
	char buf[64] = { 0 };
	char event_buffer[sizeof(struct fi_eq_cm_entry) + 64];
	struct fid_ep *ep = connect_to(&f, host, port, iwarp(), NULL, 0, NULL, NULL);
	size_t got = 0;
	struct sockaddr_in me, peer;
	size_t me_len = sizeof me, peer_len = sizeof peer, short_len = 4;
	CHECK(fi_getname(&ep->fid, &me, &me_len));
	CHECK(fi_getpeer(ep, &peer, &peer_len));
	EXPECT(peer.sin_family == AF_INET && ntohs(peer.sin_port) == atoi(port), "the peer's address, port %d", ntohs(peer.sin_port));
	EXPECT(me.sin_family == AF_INET && me.sin_port != 0 && me.sin_port != peer.sin_port, "a local address of our own");
	EXPECT(fi_getpeer(ep, &peer, &short_len) == -FI_ETOOSMALL && short_len == peer_len, "a short buffer, and the length needed");
	send_all(&f, ep, client_greeting, sizeof client_greeting);
	while (got < sizeof server_greeting)
		got += receive_some(&f, ep, buf + got, sizeof server_greeting - got);
	EXPECT(!strcmp(buf, server_greeting), "greeting \"%s\"", buf);
	/* Bad arguments are errors, not crashes. */
	EXPECT(fi_send(ep, NULL, 5, NULL, 0, NULL) == -FI_EINVAL, "send from a null buffer");
	EXPECT(fi_recv(ep, NULL, 5, NULL, 0, NULL) == -FI_EINVAL, "receive into a null buffer");
	EXPECT(fi_send(ep, buf, (size_t)-1, NULL, 0, NULL) == -FI_EINVAL, "a length beyond SSIZE_MAX");
	struct iovec bad = { NULL, 3 };
	EXPECT(fi_sendv(ep, &bad, NULL, 1, 0, NULL) == -FI_EINVAL, "sendv of a null entry");
	EXPECT(fi_sendv(ep, &bad, NULL, 100000, 0, NULL) == -FI_EINVAL, "sendv beyond iov_limit");
	EXPECT(fi_inject(ep, buf, 5000, 0) == -FI_EMSGSIZE, "inject beyond inject_size");
	CHECK(fi_shutdown(ep, 0));
	EXPECT(fi_send(ep, buf, 1, NULL, 0, NULL) == -FI_ESHUTDOWN, "send after shutdown: %zd",
	       fi_send(ep, buf, 1, NULL, 0, NULL));
	expect_end(&f, ep);
	EXPECT(fi_recv(ep, buf, 1, NULL, 0, NULL) == 0, "end of stream again");
	/* The server closes after our FIN: the connection's end arrives as FI_SHUTDOWN. */
	uint32_t event = next_event(f.eq, (void *)event_buffer, sizeof event_buffer);
	EXPECT(event == FI_SHUTDOWN, "FI_SHUTDOWN, got event %u", event);
	CHECK(fi_close(&ep->fid));
	close_fabric(&f);
	printf("client ok\n");
	return 0;
}

/* ---- bulk: both ways at once, checked byte by byte and by checksum ---- */

struct direction {
	uint64_t seed, total, done, hash;
};

/* How a chunk travels: fi_send/fi_recv, fi_sendv/fi_recvv, or fi_sendmsg/fi_recvmsg. */
enum calls { PLAIN, VECTOR, MESSAGE };

static enum calls calls_named(const char *mode)
{
	return !strcmp(mode, "vector") ? VECTOR : !strcmp(mode, "msg") ? MESSAGE : PLAIN;
}

static ssize_t send_chunk(struct fid_ep *ep, struct direction *d, uint8_t *buf, size_t cap, enum calls calls)
{
	size_t len = d->total - d->done < cap ? (size_t)(d->total - d->done) : cap;
	for (size_t i = 0; i < len; i++)
		buf[i] = pattern(d->seed, d->done + i);
	if (calls == PLAIN)
		return fi_send(ep, buf, len, NULL, 0, NULL);
	size_t a = len < 1000 ? len : 1000, b = len - a < 7001 ? len - a : 7001;
	struct iovec iov[3] = { { buf, a }, { buf + a, b }, { buf + a + b, len - a - b } };
	if (calls == VECTOR)
		return fi_sendv(ep, iov, NULL, 3, 0, NULL);
	struct fi_msg msg = { .msg_iov = iov, .iov_count = 3 };
	return fi_sendmsg(ep, &msg, 0);
}

static ssize_t receive_chunk(struct fid_ep *ep, struct direction *d, uint8_t *buf, size_t cap, enum calls calls)
{
	ssize_t n;
	struct iovec iov[4] = { { buf, 777 }, { buf + 777, 5000 }, { buf + 5777, 3333 }, { buf + 9110, cap - 9110 } };
	struct fi_msg msg = { .msg_iov = iov, .iov_count = 4 };
	if (calls == PLAIN)
		n = fi_recv(ep, buf, cap, NULL, 0, NULL);
	else if (calls == VECTOR)
		n = fi_recvv(ep, iov, NULL, 4, 0, NULL);
	else
		n = fi_recvmsg(ep, &msg, 0);
	if (n <= 0)
		return n;
	for (ssize_t i = 0; i < n; i++)
		EXPECT(buf[i] == pattern(d->seed, d->done + (uint64_t)i), "byte %llu", (unsigned long long)(d->done + i));
	d->hash = fnv1a(d->hash, buf, (size_t)n);
	return n;
}

static void bulk(struct fabric_objects *f, struct fid_ep *ep, uint64_t bytes, uint64_t my_seed, uint64_t peer_seed,
		 enum calls calls)
{
	static uint8_t out[1 << 16], in[1 << 16];
	struct direction tx = { my_seed, bytes, 0, FNV_START }, rx = { peer_seed, bytes, 0, FNV_START };
	while (tx.done < tx.total || rx.done < rx.total) {
		int moved = 0;
		if (tx.done < tx.total) {
			ssize_t n = send_chunk(ep, &tx, out, sizeof out, calls);
			if (n != -FI_EAGAIN) {
				CHECK(n);
				tx.hash = fnv1a(tx.hash, out, (size_t)n);
				tx.done += (uint64_t)n;
				moved = 1;
			}
		}
		if (rx.done < rx.total) {
			ssize_t n = receive_chunk(ep, &rx, in, sizeof in, calls);
			if (n != -FI_EAGAIN) {
				CHECK(n);
				EXPECT(n > 0, "bytes, got end of stream after %llu", (unsigned long long)rx.done);
				rx.done += (uint64_t)n;
				moved = 1;
			}
		}
		if (!moved)
			wait_endpoint(f, ep);
	}
	CHECK(fi_shutdown(ep, 0));
	expect_end(f, ep);
	printf("sent %llu bytes checksum %016llx, received %llu bytes checksum %016llx\n",
	       (unsigned long long)tx.done, (unsigned long long)tx.hash, (unsigned long long)rx.done,
	       (unsigned long long)rx.hash);
}

static int bulk_server(const char *mode, uint64_t mib)
{
	struct fabric_objects f;
	int port;
	struct fid_pep *pep = listen_any(&f, iwarp(), &port);
	struct fid_ep *ep = accept_next(&f, NULL, 0);
	bulk(&f, ep, mib << 20, 2, 1, calls_named(mode));
	CHECK(fi_close(&ep->fid));
	CHECK(fi_close(&pep->fid));
	close_fabric(&f);
	return 0;
}

static int bulk_client(const char *host, const char *port, const char *mode, uint64_t mib)
{
	struct fabric_objects f;
	struct fid_ep *ep = connect_to(&f, host, port, iwarp(), NULL, 0, NULL, NULL);
	bulk(&f, ep, mib << 20, 1, 2, calls_named(mode));
	CHECK(fi_close(&ep->fid));
	close_fabric(&f);
	return 0;
}

/* ---- peek: poll() on the FI_GETWAIT descriptor, then FI_PEEK, as fi_rstream(7) describes ---- */

static const char *peek_messages[] = { "first", "second message", "third and last" };

static int peek_server(void)
{
	struct fabric_objects f;
	int port;
	struct fid_pep *pep = listen_any(&f, iwarp(), &port);
	struct fid_ep *ep = accept_next(&f, NULL, 0);
	for (int i = 0; i < 3; i++) {
		usleep(50000); /* the client is asleep in poll() by now */
		send_all(&f, ep, peek_messages[i], strlen(peek_messages[i]));
		char ack;
		EXPECT(receive_some(&f, ep, &ack, 1) == 1 && ack == '0' + i, "ack %d", i);
	}
	CHECK(fi_shutdown(ep, 0));
	expect_end(&f, ep);
	CHECK(fi_close(&ep->fid));
	CHECK(fi_close(&pep->fid));
	close_fabric(&f);
	return 0;
}

static int peek_client(const char *host, const char *port)
{
	struct fabric_objects f;
	struct fid_ep *ep = connect_to(&f, host, port, iwarp(), NULL, 0, NULL, NULL);
	struct fid *fids[1] = { &ep->fid };
	struct fi_msg empty = { .iov_count = 0 };
	int fd, eq_fd, wakeups = 0;
	CHECK(fi_control(&ep->fid, FI_GETWAIT, &fd));
	CHECK(fi_control(&f.eq->fid, FI_GETWAIT, &eq_fd));
	/* Room to send on an idle stream: sendmsg(FI_PEEK) says how much. */
	ssize_t room = fi_sendmsg(ep, &empty, FI_PEEK);
	EXPECT(room > 0, "room to send, got %zd", room);
	for (int i = 0; i < 3; i++) {
		size_t want = strlen(peek_messages[i]);
		ssize_t ready;
		EXPECT(fi_recvmsg(ep, &empty, FI_PEEK) == -FI_EAGAIN || i > 0, "nothing readable before the first message");
		while ((ready = fi_recvmsg(ep, &empty, FI_PEEK)) == -FI_EAGAIN || (ready > 0 && (size_t)ready < want)) {
			if (fi_trywait(f.fabric, fids, 1) == FI_SUCCESS) {
				struct pollfd p = { .fd = fd, .events = POLLIN };
				int rc = poll(&p, 1, 5000);
				EXPECT(rc == 1, "poll woke for message %d (rc %d)", i, rc);
				wakeups++;
				/* What woke the endpoint is no connection event: over shared memory the
				 * peer's ring waits on the socket whose hang-up the event queue watches.
				 * (Over tcp the core's event queue shares a wait object with the domain's
				 * data sockets: no such promise there.) */
				const char *core = getenv("RSTREAM_PROVIDER");
				if (core && !strcmp(core, "shm")) {
					struct fid *eq_fids[1] = { &f.eq->fid };
					EXPECT(fi_trywait(f.fabric, eq_fids, 1) == FI_SUCCESS, "no event queued (message %d)", i);
					struct pollfd q = { .fd = eq_fd, .events = POLLIN };
					EXPECT(poll(&q, 1, 0) == 0, "the event queue is readable with no event (message %d)", i);
				}
			}
		}
		CHECK(ready);
		EXPECT((size_t)ready == want, "%zu readable bytes, saw %zd", want, ready);
		/* Peeking copies without consuming: the same bytes twice, then fi_recv takes them. */
		char peeked[64] = { 0 }, again[64] = { 0 }, taken[64] = { 0 };
		struct iovec iov = { peeked, sizeof peeked };
		struct fi_msg msg = { .msg_iov = &iov, .iov_count = 1 };
		EXPECT(fi_recvmsg(ep, &msg, FI_PEEK) == (ssize_t)want, "peek %d", i);
		iov.iov_base = again;
		EXPECT(fi_recvmsg(ep, &msg, FI_PEEK) == (ssize_t)want, "second peek %d", i);
		EXPECT(fi_recv(ep, taken, sizeof taken, NULL, 0, NULL) == (ssize_t)want, "recv %d", i);
		EXPECT(!strcmp(peeked, peek_messages[i]) && !strcmp(again, peeked) && !strcmp(taken, peeked),
		       "message %d: \"%s\" \"%s\" \"%s\"", i, peeked, again, taken);
		EXPECT(fi_recvmsg(ep, &empty, FI_PEEK) == -FI_EAGAIN, "nothing left after message %d", i);
		char ack = (char)('0' + i);
		send_all(&f, ep, &ack, 1);
	}
	EXPECT(wakeups >= 1, "slept in poll() at least once, woke %d times", wakeups);
	/* At the end of the stream FI_PEEK reports 0, as fi_recv does. */
	for (;;) {
		ssize_t n = fi_recvmsg(ep, &empty, FI_PEEK);
		if (n == -FI_EAGAIN) {
			wait_endpoint(&f, ep);
			continue;
		}
		EXPECT(n == 0, "end of stream through FI_PEEK, got %zd", n);
		break;
	}
	CHECK(fi_shutdown(ep, 0));
	CHECK(fi_close(&ep->fid));
	close_fabric(&f);
	printf("peek ok, %d wake-ups\n", wakeups);
	return 0;
}

/* ---- options: every fi_setopt value at and beyond its limits; calls that do not apply ---- */

static void expect_option(struct fid_ep *ep, int name, size_t value, int expected)
{
	int rc = fi_setopt(&ep->fid, FI_OPT_ENDPOINT, name, &value, sizeof value);
	EXPECT(rc == expected, "setopt %d = %zu: %d, wanted %d", name, value, rc, expected);
	if (rc == 0) {
		size_t got = 0, len = sizeof got;
		CHECK(fi_getopt(&ep->fid, FI_OPT_ENDPOINT, name, &got, &len));
		EXPECT(got == value && len == sizeof got, "getopt %d = %zu, wanted %zu", name, got, value);
	}
}

static void expect_no_data(struct fi_info *hints, const char *what)
{
	struct fi_info *info = NULL;
	hints->fabric_attr->prov_name = strdup("rstream");
	int rc = fi_getinfo(FI_VERSION(1, 17), "127.0.0.1", "9", 0, hints, &info);
	EXPECT(rc == -FI_ENODATA, "%s: -FI_ENODATA, got %d", what, rc);
	fi_freeinfo(hints);
}

static int options(void)
{
	struct fabric_objects f;
	struct fid_ep *ep;
	open_fabric(&f, find_stream("127.0.0.1", "9", 0, iwarp()));
	CHECK(fi_endpoint(f.domain, f.info, &ep, NULL));

	struct { int name; size_t fallback, low, high; } limits[] = {
		{ FI_OPT_SEND_BUF_SIZE, 32768, 4096, 1048575 },
		{ FI_OPT_RECV_BUF_SIZE, 32768, 4096, 1048575 },
		{ FI_OPT_TX_SIZE, 384, 8, 65536 },
		{ FI_OPT_RX_SIZE, 384, 4, 511 },
	};
	for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
		size_t got = 0, len = sizeof got;
		CHECK(fi_getopt(&ep->fid, FI_OPT_ENDPOINT, limits[i].name, &got, &len));
		EXPECT(got == limits[i].fallback, "default of option %d is %zu, got %zu", limits[i].name,
		       limits[i].fallback, got);
		expect_option(ep, limits[i].name, limits[i].low, 0);
		expect_option(ep, limits[i].name, limits[i].high, 0);
		expect_option(ep, limits[i].name, limits[i].low - 1, -FI_EINVAL);
		expect_option(ep, limits[i].name, limits[i].high + 1, -FI_EINVAL);
		expect_option(ep, limits[i].name, 0, -FI_EINVAL);
		expect_option(ep, limits[i].name, (size_t)-1, -FI_EINVAL);
		int small = 4096;
		EXPECT(fi_setopt(&ep->fid, FI_OPT_ENDPOINT, limits[i].name, &small, sizeof small) == -FI_EINVAL,
		       "a value of the wrong length is refused");
		expect_option(ep, limits[i].name, limits[i].fallback, 0);
	}
	size_t cm = 0, len = sizeof cm;
	CHECK(fi_getopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_CM_DATA_SIZE, &cm, &len));
	EXPECT(cm > 0 && cm < 65536, "connection data size %zu", cm);
	expect_option(ep, FI_OPT_CM_DATA_SIZE, cm, 0);
	expect_option(ep, FI_OPT_CM_DATA_SIZE, cm + 1, -FI_EINVAL);
	expect_option(ep, FI_OPT_CM_DATA_SIZE, 16, 0);
	size_t v = 4096, small_len = 4;
	EXPECT(fi_setopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_TX_SIZE, NULL, sizeof v) == -FI_EINVAL, "a null value");
	EXPECT(fi_getopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_TX_SIZE, &v, &small_len) == -FI_EINVAL, "a short buffer");
	EXPECT(fi_getopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_TX_SIZE, NULL, NULL) == -FI_EINVAL, "no buffer");
	EXPECT(fi_getname(&ep->fid, &v, NULL) == -FI_EINVAL, "fi_getname without a length");
	EXPECT(fi_ep_bind(ep, &f.domain->fid, 0) == -FI_ENOSYS, "binding a domain (not an event queue)");
	EXPECT(fi_control(&ep->fid, FI_GETWAIT, NULL) == -FI_EINVAL, "FI_GETWAIT without a place for the descriptor");
	EXPECT(fi_control(&ep->fid, FI_GETOPSFLAG, &v) == -FI_ENOSYS, "a command the endpoint does not have");
	struct sockaddr_in nowhere = { .sin_family = 12345 };
	EXPECT(fi_connect(ep, &nowhere, NULL, 0) == -FI_EINVAL, "an address of an unknown family");
	v = 4096;
	EXPECT(fi_setopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_MIN_MULTI_RECV, &v, sizeof v) == -FI_ENOPROTOOPT,
	       "an option the provider does not have");
	EXPECT(fi_setopt(&ep->fid, 7, FI_OPT_SEND_BUF_SIZE, &v, sizeof v) == -FI_ENOPROTOOPT, "another level");

	/* Calls that do not apply to a socket endpoint, and calls before a connection. */
	char b[8] = { 0 };
	EXPECT(fi_write(ep, b, 8, NULL, 0, 0, 0, NULL) == -FI_ENOSYS, "fi_write");
	EXPECT(fi_read(ep, b, 8, NULL, 0, 0, 0, NULL) == -FI_ENOSYS, "fi_read");
	EXPECT(fi_tsend(ep, b, 8, NULL, 0, 1, NULL) == -FI_ENOSYS, "fi_tsend");
	EXPECT(fi_trecv(ep, b, 8, NULL, 0, 1, 0, NULL) == -FI_ENOSYS, "fi_trecv");
	EXPECT(fi_atomic(ep, b, 1, NULL, 0, 0, 0, FI_UINT64, FI_SUM, NULL) == -FI_ENOSYS, "fi_atomic");
	EXPECT(fi_senddata(ep, b, 8, NULL, 1, 0, NULL) == -FI_ENOSYS, "fi_senddata");
	EXPECT(fi_cancel(&ep->fid, NULL) == -FI_ENOSYS, "fi_cancel");
	EXPECT(fi_send(ep, b, 8, NULL, 0, NULL) == -FI_ENOTCONN, "fi_send before connecting");
	EXPECT(fi_recv(ep, b, 8, NULL, 0, NULL) == -FI_ENOTCONN, "fi_recv before connecting");
	EXPECT(fi_shutdown(ep, 0) == -FI_ENOTCONN, "fi_shutdown before connecting");
	EXPECT(fi_accept(ep, NULL, 0) == -FI_EOPBADSTATE, "fi_accept on an endpoint no request opened");
	EXPECT(fi_enable(ep) == -FI_ENOEQ, "fi_enable without an event queue");
	struct fid_cq *cq;
	struct fi_cq_attr cq_attr = { .size = 8 };
	EXPECT(fi_cq_open(f.domain, &cq_attr, &cq, NULL) == -FI_ENOSYS, "fi_cq_open");
	struct fid_av *av;
	struct fi_av_attr av_attr = { .type = FI_AV_MAP };
	EXPECT(fi_av_open(f.domain, &av_attr, &av, NULL) == -FI_ENOSYS, "fi_av_open");
	struct fid_mr *mr;
	EXPECT(fi_mr_reg(f.domain, b, 8, FI_SEND, 0, 0, 0, &mr, NULL) == -FI_ENOSYS, "fi_mr_reg");

	/* Enabled: the sizes are fixed. */
	CHECK(fi_ep_bind(ep, &f.eq->fid, 0));
	CHECK(fi_enable(ep));
	v = 8192;
	EXPECT(fi_setopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_SEND_BUF_SIZE, &v, sizeof v) == -FI_EOPBADSTATE,
	       "setopt after fi_enable");
	EXPECT(fi_setopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_RX_SIZE, &v, sizeof v) == -FI_EINVAL,
	       "a bad value is still a bad value");
	char param[300] = { 0 };
	EXPECT(fi_connect(ep, NULL, param, 17) == -FI_EINVAL, "connection data beyond the size set (16)");
	CHECK(fi_close(&ep->fid));

	/* Hints it meets, and what it answers. */
	struct fi_info *h = fi_allocinfo(), *got = NULL;
	h->ep_attr->type = FI_EP_SOCK_STREAM;
	h->ep_attr->protocol = FI_PROTO_IWARP;
	h->caps = FI_MSG | FI_SEND | FI_RECV;
	h->addr_format = FI_SOCKADDR;
	h->domain_attr->threading = FI_THREAD_SAFE;
	h->domain_attr->data_progress = FI_PROGRESS_MANUAL;
	CHECK(fi_getinfo(FI_VERSION(1, 17), "127.0.0.1", "9", 0, h, &got));
	EXPECT(!strcmp(got->fabric_attr->prov_name, "rstream") && got->ep_attr->protocol == FI_PROTO_IWARP &&
	       got->addr_format == FI_SOCKADDR && got->domain_attr->threading == FI_THREAD_SAFE &&
	       got->domain_attr->data_progress == FI_PROGRESS_MANUAL &&
	       (got->caps & (FI_MSG | FI_SEND | FI_RECV)) == (FI_MSG | FI_SEND | FI_RECV) && got->dest_addr != NULL,
	       "the answer honours the hints");
	fi_freeinfo(got);
	h->ep_attr->protocol = FI_PROTO_RSTREAM;
	h->addr_format = FI_SOCKADDR_IN;
	CHECK(fi_getinfo(FI_VERSION(1, 17), NULL, "7471", FI_SOURCE, h, &got));
	EXPECT(got->ep_attr->protocol == FI_PROTO_RSTREAM && got->src_addr != NULL &&
	       ntohs(((struct sockaddr_in *)got->src_addr)->sin_port) == 7471, "a source address for a listener");
	fi_freeinfo(got);
	fi_freeinfo(h);

	/* Hints this provider cannot meet. */
	h = fi_allocinfo();
	h->caps = FI_RMA;
	expect_no_data(h, "FI_RMA");
	h = fi_allocinfo();
	h->ep_attr->type = FI_EP_MSG;
	expect_no_data(h, "FI_EP_MSG");
	h = fi_allocinfo();
	h->ep_attr->protocol = FI_PROTO_IB_RDM;
	expect_no_data(h, "FI_PROTO_IB_RDM");
	h = fi_allocinfo();
	h->domain_attr->data_progress = FI_PROGRESS_AUTO;
	expect_no_data(h, "FI_PROGRESS_AUTO for data");
	h = fi_allocinfo();
	h->addr_format = FI_ADDR_STR;
	expect_no_data(h, "FI_ADDR_STR");
	h = fi_allocinfo();
	h->fabric_attr->name = strdup("no-such-core:10.0.0.0/8");
	expect_no_data(h, "an unknown fabric");

	close_fabric(&f);
	printf("options ok\n");
	return 0;
}

/* ---- refusals: nothing listening, and a listener that rejects with a reason ---- */

static struct fi_eq_err_entry expect_refusal(struct fabric_objects *f, struct fid_ep *ep, char *data, size_t cap)
{
	char buffer[sizeof(struct fi_eq_cm_entry) + 64];
	uint32_t event;
	ssize_t n = fi_eq_sread(f->eq, &event, buffer, sizeof buffer, 20000, 0);
	EXPECT(n == -FI_EAVAIL, "an error entry, got %zd", n);
	struct fi_eq_err_entry err = { .err_data = data, .err_data_size = cap };
	EXPECT(fi_eq_readerr(f->eq, &err, 0) == sizeof err, "readerr");
	EXPECT(err.fid == &ep->fid && err.err == FI_ECONNREFUSED, "refused, got %d", err.err);
	EXPECT(fi_eq_read(f->eq, &event, buffer, sizeof buffer, 0) == -FI_EAGAIN, "nothing more queued");
	return err;
}

static int refused(const char *host, const char *port)
{
	struct fabric_objects f;
	struct fid_ep *ep;
	open_fabric(&f, find_stream(host, port, 0, iwarp()));
	CHECK(fi_endpoint(f.domain, f.info, &ep, NULL));
	CHECK(fi_ep_bind(ep, &f.eq->fid, 0));
	CHECK(fi_connect(ep, NULL, NULL, 0));
	struct fi_eq_err_entry err = expect_refusal(&f, ep, NULL, 0);
	char text[128];
	const char *said = fi_eq_strerror(f.eq, err.prov_errno, err.err_data, text, sizeof text);
	EXPECT(said == text && strlen(text) > 0, "fi_eq_strerror writes a sentence");
	/* fi_eq_write needs FI_WRITE; a queue opened with it hands back what was written. */
	uint32_t event = 0;
	char back[16];
	EXPECT(fi_eq_write(f.eq, FI_NOTIFY, "x", 1, 0) == -FI_EINVAL, "writing to a queue without FI_WRITE");
	struct fi_eq_attr writable = { .size = 4, .wait_obj = FI_WAIT_FD, .flags = FI_WRITE };
	struct fid_eq *eq2;
	CHECK(fi_eq_open(f.fabric, &writable, &eq2, NULL));
	EXPECT(fi_eq_write(eq2, FI_NOTIFY, "note", 5, 0) == 5, "fi_eq_write");
	EXPECT(fi_eq_sread(eq2, &event, back, sizeof back, 1000, 0) == 5 && event == FI_NOTIFY && !strcmp(back, "note"),
	       "the written event");
	CHECK(fi_close(&eq2->fid));
	char b[4];
	EXPECT(fi_send(ep, b, 4, NULL, 0, NULL) == -FI_ENOTCONN, "send on a refused endpoint");
	CHECK(fi_close(&ep->fid));
	close_fabric(&f);
	printf("refused ok\n");
	return 0;
}

static const char reason[] = "not today";

static int reject_server(void)
{
	struct fabric_objects f;
	int port;
	char buffer[sizeof(struct fi_eq_cm_entry) + 256];
	struct fi_eq_cm_entry *entry = (void *)buffer;
	struct fid_pep *pep = listen_any(&f, iwarp(), &port);
	uint32_t event;
	ssize_t small;
	/* A buffer too small for the request and its data is refused; the event stays queued. */
	while ((small = fi_eq_read(f.eq, &event, buffer, sizeof(struct fi_eq_cm_entry) + 2, 0)) == -FI_EAGAIN)
		usleep(1000);
	EXPECT(small == -FI_ETOOSMALL, "-FI_ETOOSMALL, got %zd", small);
	event = next_event(f.eq, entry, sizeof buffer);
	EXPECT(event == FI_CONNREQ, "request");
	EXPECT(!memcmp(entry->data, "knock knock", 11), "the client's connection data");
	CHECK(fi_reject(pep, entry->info->handle, reason, sizeof reason));
	fi_freeinfo(entry->info);
	/* The same client then connects again and is accepted, with data both ways. */
	struct fid_ep *ep = accept_next(&f, "welcome", 8);
	expect_end(&f, ep);
	CHECK(fi_close(&ep->fid));
	CHECK(fi_close(&pep->fid));
	close_fabric(&f);
	return 0;
}

static int reject_client(const char *host, const char *port)
{
	struct fabric_objects f;
	struct fid_ep *ep;
	char data[64] = { 0 };
	open_fabric(&f, find_stream(host, port, 0, iwarp()));
	CHECK(fi_endpoint(f.domain, f.info, &ep, NULL));
	CHECK(fi_ep_bind(ep, &f.eq->fid, 0));
	CHECK(fi_connect(ep, NULL, "knock knock", 11));
	struct fi_eq_err_entry err = expect_refusal(&f, ep, data, sizeof data);
	EXPECT(err.err_data_size == sizeof reason && !strcmp(data, reason), "the reason, got %zu bytes \"%s\"",
	       err.err_data_size, data);
	CHECK(fi_close(&ep->fid));
	close_fabric(&f);
	char reply[64] = { 0 };
	size_t reply_len = 0;
	ep = connect_to(&f, host, port, iwarp(), "knock knock", 11, reply, &reply_len);
	EXPECT(reply_len == 8 && !strcmp(reply, "welcome"), "the accept's data, got %zu bytes", reply_len);
	CHECK(fi_shutdown(ep, 0));
	CHECK(fi_close(&ep->fid));
	close_fabric(&f);
	printf("reject ok\n");
	return 0;
}

/* ---- echo: one event queue, many connections, one thread ---- */

struct connection {
	struct fid_ep *ep;
	int connected, finished;
	uint8_t buf[1 << 16];
	size_t pending, offset;
};

static void wait_all(struct fabric_objects *f, struct connection *c, int count)
{
	struct fid **fids = calloc((size_t)count + 1, sizeof *fids);
	struct pollfd *pfds = calloc((size_t)count + 1, sizeof *pfds);
	int n = 0;
	fids[n] = &f->eq->fid;
	CHECK(fi_control(&f->eq->fid, FI_GETWAIT, &pfds[n].fd));
	n++;
	for (int i = 0; i < count; i++) {
		if (!c[i].connected || c[i].finished)
			continue;
		fids[n] = &c[i].ep->fid;
		CHECK(fi_control(&c[i].ep->fid, FI_GETWAIT, &pfds[n].fd));
		n++;
	}
	for (int i = 0; i < n; i++)
		pfds[i].events = POLLIN;
	if (fi_trywait(f->fabric, fids, n) == FI_SUCCESS)
		poll(pfds, (nfds_t)n, 100);
	free(fids);
	free(pfds);
}

/* The usual event loop's wait: fi_trywait on every object, then one epoll over their FI_GETWAIT
 * descriptors (the event queue's and each connected endpoint's, added as they connect). Each
 * descriptor must be flat for one epoll to hold a thousand: the kernel limits the wake-up paths
 * through nested epoll sets (EPOLL_CTL_ADD failed with EINVAL past 50 to 92 endpoints before). */
static void wait_epoll(struct fabric_objects *f, int epoll, struct connection *c, int count)
{
	struct fid **fids = calloc((size_t)count + 1, sizeof *fids);
	int n = 0;
	fids[n++] = &f->eq->fid;
	for (int i = 0; i < count; i++)
		if (c[i].connected && !c[i].finished)
			fids[n++] = &c[i].ep->fid;
	if (fi_trywait(f->fabric, fids, n) == FI_SUCCESS) {
		/* No timeout to rescue a lost wake-up: traffic never pauses for 10 s in this test. */
		struct epoll_event events[64];
		int ready = epoll_wait(epoll, events, 64, 10000);
		EXPECT(ready > 0, "epoll_wait: %s", ready < 0 ? strerror(errno) : "10 s without a wake-up while connections are open");
	}
	free(fids);
}

static void watch(int epoll, struct fid *object)
{
	struct epoll_event event = { .events = EPOLLIN };
	CHECK(fi_control(object, FI_GETWAIT, &event.data.fd));
	EXPECT(epoll_ctl(epoll, EPOLL_CTL_ADD, event.data.fd, &event) == 0, "EPOLL_CTL_ADD of descriptor %d: %s",
	       event.data.fd, strerror(errno));
}

static void unwatch(int epoll, struct fid *object)
{
	int fd;
	CHECK(fi_control(object, FI_GETWAIT, &fd));
	EXPECT(epoll_ctl(epoll, EPOLL_CTL_DEL, fd, NULL) == 0, "EPOLL_CTL_DEL: %s", strerror(errno));
}

/* Echoes what each of `expected` connections sends until its end; sleeps in poll() over every
 * descriptor, or in one epoll (`use_epoll`). */
static int echo_server(int expected, int use_epoll)
{
	struct fabric_objects f;
	int port, accepted = 0, finished = 0;
	char buffer[sizeof(struct fi_eq_cm_entry) + 256];
	struct fi_eq_cm_entry *entry = (void *)buffer;
	struct connection *c = calloc((size_t)expected, sizeof *c);
	struct fid_pep *pep = listen_any(&f, iwarp(), &port);
	int epoll = -1;
	if (use_epoll) {
		epoll = epoll_create1(0);
		EXPECT(epoll >= 0, "epoll_create1: %s", strerror(errno));
		watch(epoll, &f.eq->fid);
	}
	while (finished < expected) {
		int moved = 0;
		uint32_t event;
		ssize_t n = fi_eq_read(f.eq, &event, entry, sizeof buffer, 0);
		if (n > 0) {
			moved = 1;
			if (event == FI_CONNREQ) {
				EXPECT(accepted < expected, "no more than %d requests", expected);
				struct connection *k = &c[accepted++];
				CHECK(fi_endpoint(f.domain, entry->info, &k->ep, k));
				CHECK(fi_ep_bind(k->ep, &f.eq->fid, 0));
				CHECK(fi_accept(k->ep, NULL, 0));
				fi_freeinfo(entry->info);
			} else if (event == FI_CONNECTED) {
				struct connection *k = entry->fid->context;
				k->connected = 1;
				if (use_epoll)
					watch(epoll, &k->ep->fid);
			} /* FI_SHUTDOWN: the peer's end arrives through fi_recv too */
		} else if (n != -FI_EAGAIN) {
			CHECK(n);
		}
		for (int i = 0; i < accepted; i++) {
			struct connection *k = &c[i];
			if (!k->connected || k->finished)
				continue;
			if (k->pending) {
				ssize_t s = fi_send(k->ep, k->buf + k->offset, k->pending, NULL, 0, NULL);
				if (s == -FI_EAGAIN)
					continue;
				CHECK(s);
				k->offset += (size_t)s;
				k->pending -= (size_t)s;
				moved = 1;
				continue;
			}
			ssize_t r = fi_recv(k->ep, k->buf, sizeof k->buf, NULL, 0, NULL);
			if (r == -FI_EAGAIN)
				continue;
			CHECK(r);
			moved = 1;
			if (r == 0) {
				CHECK(fi_shutdown(k->ep, 0));
				if (use_epoll)
					unwatch(epoll, &k->ep->fid);
				CHECK(fi_close(&k->ep->fid));
				k->finished = 1;
				finished++;
			} else {
				k->offset = 0;
				k->pending = (size_t)r;
			}
		}
		if (!moved && use_epoll)
			wait_epoll(&f, epoll, c, accepted);
		else if (!moved)
			wait_all(&f, c, accepted);
	}
	if (use_epoll)
		close(epoll);
	CHECK(fi_close(&pep->fid));
	close_fabric(&f);
	free(c);
	printf("echoed %d connections\n", expected);
	return 0;
}

/* What libfabric's destructor (fi_fini, not exported) does to a provider it loaded from
 * FI_PROVIDER_PATH: its cleanup, then dlclose of the library. Here the process then lives on for
 * 300 ms with bytes still arriving, where a real exit goes on to tear down the core and is gone
 * in microseconds: a thread still running the provider's code after the unload would crash in
 * that window (a C client once did, exiting on a failed check). */
static void unload_provider_and_live_on(void)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/librstream-fi.so", getenv("FI_PROVIDER_PATH"));
	void *library = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	EXPECT(library, "the provider is loaded: %s", dlerror());
	struct fi_provider *(*ini)(void) = (struct fi_provider *(*)(void))dlsym(library, "fi_prov_ini");
	EXPECT(ini, "fi_prov_ini: %s", dlerror());
	ini()->cleanup();
	dlclose(library); /* this program's reference */
	dlclose(library); /* libfabric's */
	/* From here a failed check leaves with _exit: exit would have libfabric close the freed
	 * handle again. */
	if (dlopen(path, RTLD_NOW | RTLD_NOLOAD)) {
		fprintf(stderr, "the provider is still loaded\n");
		_exit(1);
	}
	/* glibc signals every thread for a setuid (SIGSETXID, which no thread can block): a parked
	 * thread must not return into the unloaded code from its handler. */
	if (setuid(getuid()) != 0) {
		fprintf(stderr, "setuid: %s\n", strerror(errno));
		_exit(1);
	}
	usleep(300000);
	printf("lived on 300 ms after the provider's unload\n");
	_exit(0); /* libfabric's own destructor would close the handle again */
}

/* Count connections on one event queue, each sending bytes and checking their echo.
 * `leave` ("exit" or "unload", with `leave_after` bytes): once that many bytes have come back in
 * all, the program leaves at once with everything open and bytes in flight, as a program
 * leaving on a failed check does: through exit(), or through the unload exit() would do. */
static int echo_clients(const char *host, const char *port, int count, uint64_t bytes, const char *leave,
			uint64_t leave_after)
{
	struct fabric_objects f;
	char buffer[sizeof(struct fi_eq_cm_entry) + 256];
	struct fi_eq_cm_entry *entry = (void *)buffer;
	struct connection *c = calloc((size_t)count, sizeof *c);
	struct direction *tx = calloc((size_t)count, sizeof *tx), *rx = calloc((size_t)count, sizeof *rx);
	int connected = 0, finished = 0;
	uint64_t echoed = 0;
	open_fabric(&f, find_stream(host, port, 0, iwarp()));
	for (int i = 0; i < count; i++) {
		CHECK(fi_endpoint(f.domain, f.info, &c[i].ep, &c[i]));
		CHECK(fi_ep_bind(c[i].ep, &f.eq->fid, 0));
		CHECK(fi_connect(c[i].ep, NULL, NULL, 0));
		tx[i] = (struct direction){ 100 + (uint64_t)i, bytes, 0, FNV_START };
		rx[i] = tx[i];
	}
	while (connected < count) {
		uint32_t event = next_event(f.eq, entry, sizeof buffer);
		EXPECT(event == FI_CONNECTED, "connected, got event %u", event);
		struct connection *k = entry->fid->context;
		EXPECT(!k->connected, "one FI_CONNECTED per endpoint");
		k->connected = 1;
		connected++;
	}
	static uint8_t out[1 << 16];
	while (finished < count) {
		int moved = 0;
		for (int i = 0; i < count; i++) {
			if (c[i].finished)
				continue;
			if (tx[i].done < tx[i].total) {
				ssize_t n = send_chunk(c[i].ep, &tx[i], out, sizeof out, (enum calls)(i % 3));
				if (n != -FI_EAGAIN) {
					CHECK(n);
					tx[i].done += (uint64_t)n;
					moved = 1;
					if (tx[i].done == tx[i].total)
						CHECK(fi_shutdown(c[i].ep, 0));
				}
			}
			ssize_t r = receive_chunk(c[i].ep, &rx[i], c[i].buf, sizeof c[i].buf, (enum calls)(i % 3));
			if (r == -FI_EAGAIN)
				continue;
			CHECK(r);
			moved = 1;
			if (r == 0) {
				EXPECT(rx[i].done == bytes, "connection %d: %llu bytes echoed of %llu", i,
				       (unsigned long long)rx[i].done, (unsigned long long)bytes);
				CHECK(fi_close(&c[i].ep->fid));
				c[i].finished = 1;
				finished++;
			} else {
				rx[i].done += (uint64_t)r;
				echoed += (uint64_t)r;
				if (leave && echoed >= leave_after) {
					printf("leaving with %llu bytes echoed\n", (unsigned long long)echoed);
					if (!strcmp(leave, "unload"))
						unload_provider_and_live_on();
					exit(0);
				}
			}
		}
		if (!moved)
			wait_all(&f, c, count);
	}
	close_fabric(&f);
	printf("%d connections echoed %llu bytes each\n", count, (unsigned long long)bytes);
	free(c);
	free(tx);
	free(rx);
	return 0;
}

/* ---- FI_THREAD_SAFE: four threads send and four receive on one endpoint at once ---- */

#define THREADS 4
#define PER_THREAD (4u << 20)

struct shared_endpoint {
	struct fabric_objects *f;
	struct fid_ep *ep;
	int index;
	uint64_t counts[THREADS], sums[THREADS];
};

/* Every byte is a record of its own: the sender's number in the top two bits, a running count
 * below. However the threads' sends and receives interleave, each byte arrives exactly once. */
static void *sender(void *arg)
{
	struct shared_endpoint *s = arg;
	uint8_t buf[4096];
	uint64_t sent = 0;
	while (sent < PER_THREAD) {
		size_t len = PER_THREAD - sent < sizeof buf ? PER_THREAD - sent : sizeof buf;
		for (size_t i = 0; i < len; i++)
			buf[i] = (uint8_t)(s->index << 6 | ((sent + i) & 63));
		size_t done = 0;
		while (done < len) {
			ssize_t n = fi_send(s->ep, buf + done, len - done, NULL, 0, NULL);
			if (n == -FI_EAGAIN) {
				wait_endpoint(s->f, s->ep);
				continue;
			}
			CHECK(n);
			done += (size_t)n;
		}
		sent += len;
	}
	return NULL;
}

static void *receiver(void *arg)
{
	struct shared_endpoint *s = arg;
	uint8_t buf[3000];
	for (;;) {
		ssize_t n = fi_recv(s->ep, buf, sizeof buf, NULL, 0, NULL);
		if (n == -FI_EAGAIN) {
			wait_endpoint(s->f, s->ep);
			continue;
		}
		CHECK(n);
		if (n == 0)
			return NULL;
		for (ssize_t i = 0; i < n; i++) {
			s->counts[buf[i] >> 6]++;
			s->sums[buf[i] >> 6] += buf[i] & 63;
		}
	}
}

static int threads_client(const char *host, const char *port)
{
	struct fabric_objects f;
	struct fid_ep *ep = connect_to(&f, host, port, iwarp(), NULL, 0, NULL, NULL);
	struct shared_endpoint senders[THREADS], receivers[THREADS];
	pthread_t threads[2 * THREADS];
	for (int i = 0; i < THREADS; i++) {
		senders[i] = (struct shared_endpoint){ .f = &f, .ep = ep, .index = i };
		receivers[i] = senders[i];
		pthread_create(&threads[i], NULL, sender, &senders[i]);
		pthread_create(&threads[THREADS + i], NULL, receiver, &receivers[i]);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(threads[i], NULL);
	CHECK(fi_shutdown(ep, 0));
	for (int i = 0; i < THREADS; i++)
		pthread_join(threads[THREADS + i], NULL);
	uint64_t expected_sum = (PER_THREAD / 64) * (63 * 64 / 2);
	for (int t = 0; t < THREADS; t++) {
		uint64_t count = 0, sum = 0;
		for (int r = 0; r < THREADS; r++) {
			count += receivers[r].counts[t];
			sum += receivers[r].sums[t];
		}
		EXPECT(count == PER_THREAD && sum == expected_sum, "sender %d: %llu bytes back (sum %llu), wanted %u (%llu)", t,
		       (unsigned long long)count, (unsigned long long)sum, PER_THREAD, (unsigned long long)expected_sum);
	}
	CHECK(fi_close(&ep->fid));
	close_fabric(&f);
	printf("threads ok\n");
	return 0;
}

/* ---- closed with events queued: a later read must not hand out (or touch) the freed fid ---- */

static int closed_with_events(const char *host, const char *port)
{
	struct fabric_objects f;
	struct fid_ep *ep;
	char buffer[sizeof(struct fi_eq_cm_entry) + 64];
	uint32_t event;
	open_fabric(&f, find_stream(host, port, 0, iwarp()));
	CHECK(fi_endpoint(f.domain, f.info, &ep, NULL));
	CHECK(fi_ep_bind(ep, &f.eq->fid, 0));
	CHECK(fi_connect(ep, NULL, NULL, 0));
	/* Peek until the refusal is queued, then close the endpoint without reading it. */
	ssize_t n = fi_eq_sread(f.eq, &event, buffer, sizeof buffer, 20000, FI_PEEK);
	EXPECT(n == -FI_EAVAIL, "the refusal is queued, got %zd", n);
	CHECK(fi_close(&ep->fid));
	struct fi_eq_err_entry err = { 0 };
	n = fi_eq_read(f.eq, &event, buffer, sizeof buffer, 0);
	EXPECT(n == -FI_EAGAIN, "the closed endpoint's events went with it, got %zd", n);
	EXPECT(fi_eq_readerr(f.eq, &err, 0) == -FI_EAGAIN, "no error entry for a closed endpoint");
	close_fabric(&f);
	printf("closed with events ok\n");
	return 0;
}

/* ---- fabtests' stream_msg (functional/stream_msg.c in libfabric 1.17), in that program's shape:
 * exactly its hints, API 1.9, no completion queues, a greeting each way retried on -FI_EAGAIN ---- */

static struct fi_info *stream_msg_hints(void)
{
	struct fi_info *hints = fi_allocinfo();
	hints->ep_attr->type = FI_EP_SOCK_STREAM;
	hints->caps = FI_MSG;
	hints->domain_attr->mr_mode = 0;
	hints->addr_format = FI_SOCKADDR;
	hints->domain_attr->threading = FI_THREAD_SAFE;
	hints->domain_attr->data_progress = FI_PROGRESS_MANUAL;
	hints->domain_attr->control_progress = FI_PROGRESS_AUTO;
	hints->tx_attr->msg_order = FI_ORDER_SAS;
	hints->rx_attr->msg_order = FI_ORDER_SAS;
	return hints;
}

static uint32_t stream_msg_event(struct fid_eq *eq, struct fi_eq_cm_entry *entry)
{
	uint32_t event;
	ssize_t n = fi_eq_sread(eq, &event, entry, sizeof *entry, -1, 0);
	EXPECT(n == sizeof *entry, "fi_eq_sread: %zd", n);
	return event;
}

static void stream_msg_send(struct fid_ep *ep, const char *text)
{
	size_t len = strlen(text) + 1, done = 0;
	while (done < len) {
		ssize_t n = fi_send(ep, text + done, len - done, NULL, 0, NULL);
		if (n == -FI_EAGAIN)
			continue;
		EXPECT(n > 0, "fi_send: %zd", n);
		done += (size_t)n;
	}
}

static void stream_msg_receive(struct fid_ep *ep, const char *expected)
{
	char buf[64] = { 0 };
	size_t len = strlen(expected) + 1, done = 0;
	while (done < len) {
		ssize_t n = fi_recv(ep, buf + done, len - done, NULL, 0, NULL);
		if (n == -FI_EAGAIN)
			continue;
		EXPECT(n > 0, "fi_recv: %zd", n);
		done += (size_t)n;
	}
	EXPECT(!strcmp(buf, expected), "received \"%s\"", buf);
}

static int stream_msg_server(void)
{
	struct fi_info *hints = stream_msg_hints(), *fi_pep, *fi;
	struct fid_fabric *fabric;
	struct fid_domain *domain;
	struct fid_eq *eq;
	struct fid_pep *pep;
	struct fid_ep *ep;
	struct fi_eq_attr eq_attr = { .wait_obj = FI_WAIT_UNSPEC };
	struct fi_eq_cm_entry entry;
	struct sockaddr_in addr;
	size_t len = sizeof addr;
	CHECK(fi_getinfo(FI_VERSION(1, 9), "127.0.0.1", "0", FI_SOURCE, hints, &fi_pep));
	EXPECT(fi_pep->domain_attr->control_progress == FI_PROGRESS_AUTO, "automatic control progress");
	CHECK(fi_fabric(fi_pep->fabric_attr, &fabric, NULL));
	CHECK(fi_eq_open(fabric, &eq_attr, &eq, NULL));
	CHECK(fi_passive_ep(fabric, fi_pep, &pep, NULL));
	CHECK(fi_pep_bind(pep, &eq->fid, 0));
	CHECK(fi_listen(pep));
	CHECK(fi_getname(&pep->fid, &addr, &len));
	printf("port %d\n", ntohs(addr.sin_port));
	fflush(stdout);
	EXPECT(stream_msg_event(eq, &entry) == FI_CONNREQ, "FI_CONNREQ");
	fi = entry.info;
	CHECK(fi_domain(fabric, fi, &domain, NULL));
	CHECK(fi_endpoint(domain, fi, &ep, NULL));
	CHECK(fi_ep_bind(ep, &eq->fid, 0));
	CHECK(fi_enable(ep));
	CHECK(fi_accept(ep, NULL, 0));
	EXPECT(stream_msg_event(eq, &entry) == FI_CONNECTED && entry.fid == &ep->fid, "FI_CONNECTED");
	stream_msg_receive(ep, client_greeting);
	stream_msg_send(ep, server_greeting);
	CHECK(fi_shutdown(ep, 0));
	CHECK(fi_close(&ep->fid));
	CHECK(fi_close(&pep->fid));
	CHECK(fi_close(&domain->fid));
	CHECK(fi_close(&eq->fid));
	CHECK(fi_close(&fabric->fid));
	fi_freeinfo(fi);
	fi_freeinfo(fi_pep);
	fi_freeinfo(hints);
	printf("stream_msg server ok\n");
	return 0;
}

static int stream_msg_client(const char *host, const char *port)
{
	struct fi_info *hints = stream_msg_hints(), *fi;
	struct fid_fabric *fabric;
	struct fid_domain *domain;
	struct fid_eq *eq;
	struct fid_ep *ep;
	struct fi_eq_attr eq_attr = { .wait_obj = FI_WAIT_UNSPEC };
	struct fi_eq_cm_entry entry;
	CHECK(fi_getinfo(FI_VERSION(1, 9), host, port, 0, hints, &fi));
	CHECK(fi_fabric(fi->fabric_attr, &fabric, NULL));
	CHECK(fi_eq_open(fabric, &eq_attr, &eq, NULL));
	CHECK(fi_domain(fabric, fi, &domain, NULL));
	CHECK(fi_endpoint(domain, fi, &ep, NULL));
	CHECK(fi_ep_bind(ep, &eq->fid, 0));
	CHECK(fi_enable(ep));
	CHECK(fi_connect(ep, fi->dest_addr, NULL, 0));
	EXPECT(stream_msg_event(eq, &entry) == FI_CONNECTED && entry.fid == &ep->fid, "FI_CONNECTED");
	stream_msg_send(ep, client_greeting);
	stream_msg_receive(ep, server_greeting);
	CHECK(fi_shutdown(ep, 0));
	CHECK(fi_close(&ep->fid));
	CHECK(fi_close(&domain->fid));
	CHECK(fi_close(&eq->fid));
	CHECK(fi_close(&fabric->fid));
	fi_freeinfo(fi);
	fi_freeinfo(hints);
	printf("stream_msg client ok\n");
	return 0;
}

/* ---- protocol v4's peer timeout through the provider: a server that accepts and then stops
 * calling; the client's data calls end in -FI_ETIMEDOUT and its queue gets an error entry ---- */

static int silent_server(void)
{
	struct fabric_objects f;
	int port;
	struct fid_pep *pep = listen_any(&f, iwarp(), &port);
	struct fid_ep *ep = accept_next(&f, NULL, 0);
	sleep(8); /* not driven: no heartbeats */
	CHECK(fi_close(&ep->fid));
	CHECK(fi_close(&pep->fid));
	close_fabric(&f);
	printf("silent ok\n");
	return 0;
}

static int timeout_client(const char *host, const char *port)
{
	struct fabric_objects f;
	struct fid_ep *ep;
	char buffer[sizeof(struct fi_eq_cm_entry) + 64], byte;
	uint32_t event;
	/* A malformed setting is refused where the endpoint is made. */
	open_fabric(&f, find_stream(host, port, 0, iwarp()));
	setenv("RSTREAM_PEER_TIMEOUT", "soon", 1);
	EXPECT(fi_endpoint(f.domain, f.info, &ep, NULL) == -FI_EINVAL, "a malformed RSTREAM_PEER_TIMEOUT");
	setenv("RSTREAM_PEER_TIMEOUT", "1", 1);
	EXPECT(fi_endpoint(f.domain, f.info, &ep, NULL) == -FI_EINVAL, "a peer timeout under 3 s");
	close_fabric(&f);
	setenv("RSTREAM_PEER_TIMEOUT", "3", 1);
	ep = connect_to(&f, host, port, iwarp(), NULL, 0, NULL, NULL);
	time_t start = time(NULL);
	ssize_t n;
	while ((n = fi_recv(ep, &byte, 1, NULL, 0, NULL)) == -FI_EAGAIN) {
		EXPECT(time(NULL) - start < 10, "no timeout after 10 s");
		usleep(1000);
	}
	EXPECT(n == -FI_ETIMEDOUT, "fi_recv: %zd", n);
	long waited = (long)(time(NULL) - start);
	EXPECT(waited >= 2 && waited <= 6, "timed out after %ld s", waited);
	n = fi_eq_sread(f.eq, &event, buffer, sizeof buffer, 5000, 0);
	EXPECT(n == -FI_EAVAIL, "an error entry, got %zd", n);
	struct fi_eq_err_entry err = { 0 };
	EXPECT(fi_eq_readerr(f.eq, &err, 0) == sizeof err, "readerr");
	EXPECT(err.fid == &ep->fid && err.err == FI_ETIMEDOUT, "FI_ETIMEDOUT, got %d", err.err);
	CHECK(fi_close(&ep->fid));
	close_fabric(&f);
	printf("timeout ok after %ld s\n", waited);
	return 0;
}

int main(int argc, char **argv)
{
	alarm(240); /* a hung side fails its test instead of hanging the suite */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		goto usage;
	const char *cmd = argv[1];
	if (!strcmp(cmd, "greeting-server"))
		return greeting_server();
	if (!strcmp(cmd, "greeting-client") && argc == 4)
		return greeting_client(argv[2], argv[3]);
	if (!strcmp(cmd, "bulk-server") && argc == 4)
		return bulk_server(argv[2], strtoull(argv[3], NULL, 10));
	if (!strcmp(cmd, "bulk-client") && argc == 6)
		return bulk_client(argv[2], argv[3], argv[4], strtoull(argv[5], NULL, 10));
	if (!strcmp(cmd, "peek-server"))
		return peek_server();
	if (!strcmp(cmd, "peek-client") && argc == 4)
		return peek_client(argv[2], argv[3]);
	if (!strcmp(cmd, "options"))
		return options();
	if (!strcmp(cmd, "refused") && argc == 4)
		return refused(argv[2], argv[3]);
	if (!strcmp(cmd, "reject-server"))
		return reject_server();
	if (!strcmp(cmd, "reject-client") && argc == 4)
		return reject_client(argv[2], argv[3]);
	if (!strcmp(cmd, "echo-server") && argc == 3)
		return echo_server(atoi(argv[2]), 0);
	if (!strcmp(cmd, "epoll-echo-server") && argc == 3)
		return echo_server(atoi(argv[2]), 1);
	if (!strcmp(cmd, "echo-clients") && argc == 6)
		return echo_clients(argv[2], argv[3], atoi(argv[4]), strtoull(argv[5], NULL, 10), NULL, 0);
	if (!strcmp(cmd, "echo-clients") && argc == 8 && (!strcmp(argv[6], "exit") || !strcmp(argv[6], "unload")))
		return echo_clients(argv[2], argv[3], atoi(argv[4]), strtoull(argv[5], NULL, 10), argv[6],
				    strtoull(argv[7], NULL, 10));
	if (!strcmp(cmd, "threads-client") && argc == 4)
		return threads_client(argv[2], argv[3]);
	if (!strcmp(cmd, "closed-with-events") && argc == 4)
		return closed_with_events(argv[2], argv[3]);
	if (!strcmp(cmd, "silent-server"))
		return silent_server();
	if (!strcmp(cmd, "timeout-client") && argc == 4)
		return timeout_client(argv[2], argv[3]);
	if (!strcmp(cmd, "stream-msg-server"))
		return stream_msg_server();
	if (!strcmp(cmd, "stream-msg-client") && argc == 4)
		return stream_msg_client(argv[2], argv[3]);
usage:
	fprintf(stderr, "usage: provider_test greeting-server | greeting-client HOST PORT | bulk-server MODE MIB |\n"
			"  bulk-client HOST PORT MODE MIB | peek-server | peek-client HOST PORT | options |\n"
			"  refused HOST PORT | reject-server | reject-client HOST PORT | [epoll-]echo-server COUNT |\n"
			"  echo-clients HOST PORT COUNT BYTES [exit|unload AFTER] | threads-client HOST PORT | closed-with-events HOST PORT |\n"
			"  stream-msg-server | stream-msg-client HOST PORT | silent-server | timeout-client HOST PORT\n");
	return 2;
}
