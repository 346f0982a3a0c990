// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * ferroturn's kernel fast path: an XDP program that relays the channels the
 * engine has bound for UDP clients (RFC 8656 §12), so that their packets
 * never wake a thread.
 *
 * - ChannelData from a client (§12.4: channel number 0x4000-0x7FFF, length
 *   within the datagram) to a listener becomes a UDP datagram from the
 *   relayed transport address to the peer, carrying the application data.
 * - A datagram from a peer to a relayed transport address becomes
 *   ChannelData from the listener to the client (§12.7; unpadded, as the
 *   userspace path sends it over UDP, §12.5).
 *
 * Only what the `flows` map names is touched, and only while its entry has
 * not expired; everything else (STUN, Send and Data indications, unbound
 * channels, IP options, IPv6 extension headers, fragments, VLAN tags,
 * anything malformed, routes the kernel cannot resolve) goes on to the
 * stack untouched (XDP_PASS), where ferroturn handles it as it always does.
 * Packets over an allocation's packet-rate or bandwidth ceiling are
 * dropped, as the userspace path drops them.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define FAMILY_INET 2
#define FAMILY_INET6 10
#define NS_PER_SEC 1000000000ULL
/* Directions, as the engine's `Direction` numbers them. */
#define TO_PEER 0
#define TO_CLIENT 1
#define TTL 64

/*
 * A packet as it arrives: addresses (IPv4 as ::ffff:a.b.c.d) and ports in
 * network order. `channel` is the ChannelData channel number (network
 * order) for a client's flow, 0 for a peer's.
 */
struct flow_key {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__be16 channel;
	__u16 pad;
};

/*
 * What it becomes: `to`, the packet as it leaves, whose `channel` nonzero
 * frames the payload as ChannelData on that channel (to a client), 0
 * unwraps ChannelData (to a peer).
 */
struct flow_target {
	struct flow_key to;
	__u32 chan_slot;
	__u32 alloc_slot;
	/* CLOCK_MONOTONIC (bpf_ktime_get_ns) after which the entry is dead. */
	__u64 expires_ns;
};

/* Exact counts of one channel, by direction: packets and payload bytes. */
struct chan_count {
	__u64 packets[2];
	__u64 bytes[2];
};

/* A token bucket holding one second of its rate, in units of 1e-9 token;
 * `owed`: what the userspace path relayed under the same ceiling beyond
 * the level (at most one second of the rate), paid back by the refill
 * before the level grows again. */
struct bucket {
	__u64 level;
	__u64 last_ns;
	__u64 owed;
};

/* The ceilings of one allocation and their buckets, by direction. */
struct alloc_limit {
	struct bpf_spin_lock lock;
	__u32 pad;
	/* Per second; 0: no ceiling. */
	__u64 packet_rate;
	__u64 bandwidth;
	struct bucket packets[2];
	struct bucket bytes[2];
	/* How much of the allocation's `relayed` (below) the buckets were
	 * debited with, by direction: packets, bytes. */
	__u64 debited_packets[2];
	__u64 debited_bytes[2];
	/* Packets dropped over a ceiling. */
	__u64 limited[2];
};

/*
 * What the userspace path relayed for one allocation since its slot was
 * taken, by direction (packets, application data bytes), as ferroturn
 * last wrote it (once a second), and when: the program takes each new
 * amount from the allocation's buckets as of that time, so that both paths
 * share one ceiling.
 */
struct alloc_relayed {
	struct bpf_spin_lock lock;
	__u32 pad;
	__u64 written_ns;
	__u64 packets[2];
	__u64 bytes[2];
};

/* Set before loading by the unit tests (BPF_PROG_TEST_RUN has no route):
 * skip the route lookup, send back out with fixed MACs. */
const volatile __u32 unit_test = 0;

#ifndef MAX_FLOWS
#define MAX_FLOWS 131072
#endif
#ifndef MAX_CHANNELS
#define MAX_CHANNELS 65536
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_target);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CHANNELS);
	__type(key, __u32);
	__type(value, struct chan_count);
} chan_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CHANNELS);
	__type(key, __u32);
	__type(value, struct alloc_limit);
} alloc_limits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CHANNELS);
	__type(key, __u32);
	__type(value, struct alloc_relayed);
} alloc_relayed SEC(".maps");

static __always_inline __u32 fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return s;
}

/* Ones' complement sum of the 16-bit words of a 16-byte address (the
 * last 4 bytes only for IPv4). */
static __always_inline __u32 sum_addr(const __u8 *a, int v6)
{
	const __u16 *w = (const __u16 *)a;
	__u32 s = w[6] + w[7];
	if (v6)
		s += w[0] + w[1] + w[2] + w[3] + w[4] + w[5];
	return s;
}

/* Add `add` to `b`, paying what it owes first; up to `full`. */
static __always_inline void pay(struct bucket *b, __u64 add, __u64 full)
{
	if (b->owed >= add) {
		b->owed -= add;
		return;
	}
	add -= b->owed;
	b->owed = 0;
	/* Compared, not summed: level + add may pass 2^64 at high rates. */
	if (add >= full - b->level)
		b->level = full;
	else
		b->level += add;
}

/* Refill `b` at `rate` per second up to `now`. */
static __always_inline void refill(struct bucket *b, __u64 now, __u64 rate)
{
	__u64 full = rate * NS_PER_SEC;
	if (b->last_ns == 0) {
		b->level = full;
	} else if (now > b->last_ns) {
		__u64 dt = now - b->last_ns;
		if (dt >= 2 * NS_PER_SEC) {
			/* Two seconds repay the most it owes and fill it. */
			b->owed = 0;
			b->level = full;
		} else {
			if (dt > NS_PER_SEC) {
				pay(b, full, full);
				dt -= NS_PER_SEC;
			}
			pay(b, dt * rate, full);
		}
	} else {
		return;
	}
	b->last_ns = now;
}

/* Take `amount` from `b` at `now`, refilled at `rate` per second; false
 * if it has not that much. Called with the allocation's lock held. */
static __always_inline int take(struct bucket *b, __u64 now, __u64 amount, __u64 rate)
{
	if (rate == 0)
		return 1;
	refill(b, now, rate);
	amount *= NS_PER_SEC;
	if (b->level < amount)
		return 0;
	b->level -= amount;
	return 1;
}

/* Take `amount` that passed in userspace at `at` from `b`: below an empty
 * level it is owed, up to one second of `rate`. Lock held. */
static __always_inline void debit(struct bucket *b, __u64 at, __u64 amount, __u64 rate)
{
	if (rate == 0 || amount == 0)
		return;
	refill(b, at, rate);
	__u64 full = rate * NS_PER_SEC;
	if (amount > rate)
		amount = rate;
	amount *= NS_PER_SEC;
	if (b->level >= amount) {
		b->level -= amount;
	} else {
		b->owed += amount - b->level;
		b->level = 0;
		if (b->owed > full)
			b->owed = full;
	}
}

/* A load of `x` the compiler makes exactly once, where it stands. */
#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))

/* Whether a packet of `len` payload bytes of allocation `slot` may pass
 * in direction `dir` now (the engine's `Meter::allow`: packets first),
 * after taking from its buckets what userspace relayed in `dir` since
 * they were last debited. */
static __always_inline int admit(__u32 slot, int dir, __u64 now, __u64 len)
{
	struct alloc_limit *l = bpf_map_lookup_elem(&alloc_limits, &slot);
	if (!l)
		return 0;
	struct alloc_relayed *r = bpf_map_lookup_elem(&alloc_relayed, &slot);
	__u64 at = 0, packets = 0, bytes = 0;
	/* Userspace rewrites `r` at most once a second, so a packet almost
	 * never finds in it more than the buckets were debited with: look
	 * without either lock, and copy `r` under its lock only when it holds
	 * more. Every amount debited below is from that copy, compared under
	 * `l`'s lock; a stale or torn look only delays the debit to a later
	 * packet, which looks again. The counts, not `written_ns`, decide:
	 * each write raises one of them, whatever the clock said. */
	if (r && (READ_ONCE(r->packets[dir & 1]) > READ_ONCE(l->debited_packets[dir & 1]) ||
		  READ_ONCE(r->bytes[dir & 1]) > READ_ONCE(l->debited_bytes[dir & 1]))) {
		bpf_spin_lock(&r->lock);
		at = r->written_ns;
		packets = r->packets[dir & 1];
		bytes = r->bytes[dir & 1];
		bpf_spin_unlock(&r->lock);
	}
	if (at > now)
		at = now;
	int ok;
	bpf_spin_lock(&l->lock);
	if (packets > l->debited_packets[dir & 1] || bytes > l->debited_bytes[dir & 1]) {
		__u64 p = packets > l->debited_packets[dir & 1] ? packets - l->debited_packets[dir & 1] : 0;
		__u64 b = bytes > l->debited_bytes[dir & 1] ? bytes - l->debited_bytes[dir & 1] : 0;
		debit(&l->packets[dir & 1], at, p, l->packet_rate);
		debit(&l->bytes[dir & 1], at, b, l->bandwidth);
		l->debited_packets[dir & 1] = packets;
		l->debited_bytes[dir & 1] = bytes;
	}
	ok = take(&l->packets[dir], now, 1, l->packet_rate) &&
	     take(&l->bytes[dir], now, len, l->bandwidth);
	if (!ok)
		l->limited[dir] += 1;
	bpf_spin_unlock(&l->lock);
	return ok;
}

static __always_inline void set_mapped(__u8 *a, const void *v4)
{
	__builtin_memset(a, 0, 10);
	a[10] = 0xff;
	a[11] = 0xff;
	__builtin_memcpy(a + 12, v4, 4);
}

static __always_inline int is_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

struct ip4 {
	__u8 vihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ip6 {
	__be32 vtcflow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/*
 * The whole path for one family: `v6` is a constant, so each family gets
 * its own copy with fixed header offsets for the verifier.
 */
static __always_inline int relay(struct xdp_md *ctx, const int v6)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	const int l3 = v6 ? sizeof(struct ip6) : sizeof(struct ip4);
	const int hdr = sizeof(struct ethhdr) + l3 + sizeof(struct udphdr);
	struct flow_key key = {};
	__u32 l3_len, udp_len;
	__be32 first4 = 0; /* IPv4: tos..id, IPv6: version, class, flow */
	__be16 frag = 0;

	if (data + hdr > end)
		return XDP_PASS;
	struct udphdr *udp = data + sizeof(struct ethhdr) + l3;
	if (v6) {
		struct ip6 *ip = data + sizeof(struct ethhdr);
		if ((bpf_ntohl(ip->vtcflow) >> 28) != 6 || ip->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		l3_len = sizeof(struct ip6) + bpf_ntohs(ip->payload_len);
		__builtin_memcpy(key.src, ip->saddr, 16);
		__builtin_memcpy(key.dst, ip->daddr, 16);
		first4 = ip->vtcflow;
	} else {
		struct ip4 *ip = data + sizeof(struct ethhdr);
		/* No options, no fragments (MF set or an offset). */
		if (ip->vihl != 0x45 || ip->protocol != IPPROTO_UDP ||
		    (ip->frag_off & bpf_htons(0x3fff)))
			return XDP_PASS;
		l3_len = bpf_ntohs(ip->tot_len);
		set_mapped(key.src, &ip->saddr);
		set_mapped(key.dst, &ip->daddr);
		first4 = ((__be32)ip->tos << 8) | ((__be32)ip->id << 16);
		frag = ip->frag_off & bpf_htons(0x4000);
	}
	udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(struct udphdr) || l3_len != l3 + udp_len ||
	    data + sizeof(struct ethhdr) + l3_len > end)
		return XDP_PASS;
	key.sport = udp->source;
	key.dport = udp->dest;
	__u32 plen = udp_len - sizeof(struct udphdr);
	/* Bytes past the IP packet (Ethernet padding). */
	__u32 trailer = end - (data + sizeof(struct ethhdr) + l3_len);
	__u8 *payload = (void *)(udp + 1);

	/* A peer's flow first: its datagrams may look like anything. */
	struct flow_target *t = bpf_map_lookup_elem(&flows, &key);
	__u32 len = plen;         /* the application data's length */
	__u32 pad = 0;            /* ChannelData padding removed (to a peer) */
	__be16 chan_word = 0, len_word = 0;
	if (!t) {
		if (plen < 4 || payload + 4 > (__u8 *)end)
			return XDP_PASS;
		/* ChannelData: the two top bits 01 (RFC 8656 §12.4). */
		if ((payload[0] & 0xc0) != 0x40)
			return XDP_PASS;
		chan_word = *(__be16 *)payload;
		len_word = *(__be16 *)(payload + 2);
		len = bpf_ntohs(len_word);
		if (4 + len > plen || plen - 4 - len > 3)
			return XDP_PASS;
		pad = plen - 4 - len;
		key.channel = chan_word;
		t = bpf_map_lookup_elem(&flows, &key);
		if (!t || t->to.channel != 0)
			return XDP_PASS;
	} else if (t->to.channel == 0) {
		return XDP_PASS;
	}
	int dir = t->to.channel ? TO_CLIENT : TO_PEER;
	__u64 now = bpf_ktime_get_ns();
	if (now >= t->expires_ns || is_mapped(t->to.dst) == v6 || is_mapped(t->to.src) == v6)
		return XDP_PASS;

	__u32 new_udp = sizeof(struct udphdr) + (dir == TO_CLIENT ? 4 + len : len);
	__u16 old_check = udp->check;
	/* IPv6 has no "no checksum"; padding would have to leave the sum. */
	if (v6 && (old_check == 0 || pad))
		return XDP_PASS;

	/* Where it goes next: the route and the neighbour's MAC, or the stack. */
	struct bpf_fib_lookup fib = {};
	fib.ifindex = ctx->ingress_ifindex;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = t->to.sport;
	fib.dport = t->to.dport;
	fib.tot_len = l3 + new_udp;
	if (v6) {
		fib.family = FAMILY_INET6;
		__builtin_memcpy(fib.ipv6_src, t->to.src, 16);
		__builtin_memcpy(fib.ipv6_dst, t->to.dst, 16);
	} else {
		fib.family = FAMILY_INET;
		__builtin_memcpy(&fib.ipv4_src, t->to.src + 12, 4);
		__builtin_memcpy(&fib.ipv4_dst, t->to.dst + 12, 4);
	}
	if (unit_test) {
		__builtin_memset(fib.dmac, 0xd0, ETH_ALEN);
		__builtin_memset(fib.smac, 0x50, ETH_ALEN);
		fib.ifindex = ctx->ingress_ifindex;
	} else if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS) {
		return XDP_PASS;
	}

	if (!admit(t->alloc_slot, dir, now, len))
		return XDP_DROP;
	__u32 slot = t->chan_slot;
	struct chan_count *c = bpf_map_lookup_elem(&chan_counts, &slot);
	if (c) {
		__sync_fetch_and_add(&c->packets[dir], 1);
		__sync_fetch_and_add(&c->bytes[dir], len);
	}

	/* The UDP checksum, updated for what changes (RFC 1624): the pseudo
	 * header's addresses and length, the ports, the length field, and the
	 * ChannelData header that leaves or arrives; the data stays. A zero
	 * (IPv4: none) stays zero, and so does an IPv4 one that loses padding. */
	__u16 check = 0;
	if (old_check && !pad) {
		__u32 old_sum = sum_addr(key.src, v6) + sum_addr(key.dst, v6) +
				key.sport + key.dport + 2 * (__u32)udp->len;
		__u32 new_sum = sum_addr(t->to.src, v6) + sum_addr(t->to.dst, v6) + t->to.sport +
				t->to.dport + 2 * (__u32)bpf_htons(new_udp);
		if (dir == TO_PEER)
			old_sum += chan_word + len_word;
		else
			new_sum += t->to.channel + bpf_htons(len);
		__u32 s = (__u16)~old_check + (__u16)~fold(fold(old_sum)) + fold(new_sum);
		check = ~fold(s);
		if (check == 0)
			check = 0xffff;
	}

	/* Save what the new headers keep, then resize. */
	struct flow_target out = *t;
	if (trailer + pad) {
		if (bpf_xdp_adjust_tail(ctx, -(int)(trailer + pad)))
			return XDP_DROP;
	}
	if (bpf_xdp_adjust_head(ctx, dir == TO_PEER ? 4 : -4))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + hdr + 4 > end)
		return XDP_DROP;

	struct ethhdr *eth = data;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(v6 ? ETH_P_IPV6 : ETH_P_IP);
	if (v6) {
		struct ip6 *ip = data + sizeof(struct ethhdr);
		ip->vtcflow = first4;
		ip->payload_len = bpf_htons(new_udp);
		ip->nexthdr = IPPROTO_UDP;
		ip->hop_limit = TTL;
		__builtin_memcpy(ip->saddr, out.to.src, 16);
		__builtin_memcpy(ip->daddr, out.to.dst, 16);
	} else {
		struct ip4 *ip = data + sizeof(struct ethhdr);
		ip->vihl = 0x45;
		ip->tos = (first4 >> 8) & 0xff;
		ip->tot_len = bpf_htons(l3 + new_udp);
		ip->id = first4 >> 16;
		ip->frag_off = frag;
		ip->ttl = TTL;
		ip->protocol = IPPROTO_UDP;
		ip->check = 0;
		__builtin_memcpy(&ip->saddr, out.to.src + 12, 4);
		__builtin_memcpy(&ip->daddr, out.to.dst + 12, 4);
		const __u16 *w = (const __u16 *)ip;
		__u32 s = 0;
#pragma unroll
		for (int i = 0; i < 10; i++)
			s += w[i];
		ip->check = ~fold(s);
	}
	udp = data + sizeof(struct ethhdr) + l3;
	udp->source = out.to.sport;
	udp->dest = out.to.dport;
	udp->len = bpf_htons(new_udp);
	udp->check = check;
	if (dir == TO_CLIENT) {
		__be16 *h = (void *)(udp + 1);
		h[0] = out.to.channel;
		h[1] = bpf_htons(len);
	}
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib.ifindex, 0);
}

SEC("xdp")
int ferroturn_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if (data + sizeof(*eth) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return relay(ctx, 0);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return relay(ctx, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
