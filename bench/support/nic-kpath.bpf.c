// SPDX-License-Identifier: GPL-2.0
/*
 * The NIC's frame path in the kernel, as a prototype to measure (issue 15, item 5): tc eBPF
 * programs that carry a guest's Ethernet frames between two namespaces as TCP-looking segments,
 * the way vrio's channel does, with no user space on the path. bench/nic.ts (BENCH_KPATH=1) builds
 * it with clang, once per end and direction, and loads it with tc:
 *
 *   encap (-DENCAP), on the ingress of the NIC's inner veth end: pushes an Ethernet, IPv4 and TCP
 *     header in front of the frame (any protocol, GSO frames as one super-frame) and sends it out
 *     of the uplink (bpf_redirect);
 *   decap (-DDECAP), on the uplink's ingress: takes the segments addressed to this end's address
 *     and port, strips the outer headers and sends the inner frame out of the inner veth end; all
 *     else goes on to the stack.
 *
 * Addresses, ports and interface indexes are compile-time constants (-D...), one object per end.
 *
 * What this prototype is not, on purpose, because that is what it measures: no AEAD (the kernel's
 * bpf_crypto kfuncs offer skciphers only, on linear data; this kernel has no GCM either), no
 * authentication, no replay window, no ACKs, window or retransmission, no services. The outer TCP
 * checksum is left 0 and a super-frame over 64 KiB wraps the outer IP length, which a veth passes
 * and a real link would not. It measures what a kernel path could reach, not a way to run vrio.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef LOCAL_IP
#error "build with -DLOCAL_IP=0x0a... -DPEER_IP -DLOCAL_PORT -DPEER_PORT -DLOCAL_MAC -DPEER_MAC -DOUT_IFINDEX"
#endif

#define OUTER (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct tcphdr))

struct outer {
  struct ethhdr eth;
  struct iphdr ip;
  struct tcphdr tcp;
} __attribute__((packed));

/* The outer TCP sequence number: the bytes this end has sent, as a stream would count them. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u32);
} seq SEC(".maps");

static __always_inline void put_mac(unsigned char *p, __u64 mac) {
#pragma unroll
  for (int i = 0; i < 6; i++) p[i] = (mac >> (8 * (5 - i))) & 0xff;
}

#ifdef ENCAP
SEC("tc")
int encap(struct __sk_buff *skb) {
  __u32 len = skb->len;
  __u32 zero = 0;
  __u32 *next = bpf_map_lookup_elem(&seq, &zero);
  if (!next) return TC_ACT_SHOT;
  __u32 s = __sync_fetch_and_add(next, len);

  struct outer h = {};
  put_mac(h.eth.h_dest, PEER_MAC);
  put_mac(h.eth.h_source, LOCAL_MAC);
  h.eth.h_proto = bpf_htons(ETH_P_IP);
  struct iphdr ip = {};
  ip.version = 4;
  ip.ihl = 5;
  __u32 total = len + sizeof(struct iphdr) + sizeof(struct tcphdr);
  ip.tot_len = bpf_htons(total > 0xffff ? 0xffff : total);
  ip.id = bpf_htons(s & 0xffff);
  ip.ttl = 64;
  ip.protocol = IPPROTO_TCP;
  ip.saddr = bpf_htonl(LOCAL_IP);
  ip.daddr = bpf_htonl(PEER_IP);
  __s64 sum = bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0);
  if (sum < 0) return TC_ACT_SHOT;
  __u32 c = (__u32)sum;
  c = (c & 0xffff) + (c >> 16);
  c = (c & 0xffff) + (c >> 16);
  ip.check = (__u16)~c;
  __builtin_memcpy(&h.ip, &ip, sizeof(ip));
  h.tcp.source = bpf_htons(LOCAL_PORT);
  h.tcp.dest = bpf_htons(PEER_PORT);
  h.tcp.seq = bpf_htonl(s);
  h.tcp.doff = 5;
  h.tcp.psh = 1;
  h.tcp.ack = 1;
  h.tcp.window = bpf_htons(0xffff);

  if (bpf_skb_change_head(skb, OUTER, 0)) return TC_ACT_SHOT;
  if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0)) return TC_ACT_SHOT;
  return bpf_redirect(OUT_IFINDEX, 0);
}
#endif

#ifdef DECAP
SEC("tc")
int decap(struct __sk_buff *skb) {
  struct outer h;
  struct ethhdr inner;
  if (bpf_skb_load_bytes(skb, 0, &h, sizeof(h))) return TC_ACT_OK;
  if (h.eth.h_proto != bpf_htons(ETH_P_IP) || h.ip.ihl != 5 || h.ip.protocol != IPPROTO_TCP ||
      h.ip.daddr != bpf_htonl(LOCAL_IP) || h.ip.saddr != bpf_htonl(PEER_IP) ||
      h.tcp.dest != bpf_htons(LOCAL_PORT) || h.tcp.source != bpf_htons(PEER_PORT) || h.tcp.doff != 5)
    return TC_ACT_OK;
  if (bpf_skb_load_bytes(skb, OUTER, &inner, sizeof(inner))) return TC_ACT_SHOT;
  /* Drops the outer IP and TCP headers and the inner Ethernet header after the outer one (kept
   * in place), then writes the inner Ethernet header over it. */
  if (bpf_skb_adjust_room(skb, -(__s32)(OUTER), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
    return TC_ACT_SHOT;
  if (bpf_skb_store_bytes(skb, 0, &inner, sizeof(inner), 0)) return TC_ACT_SHOT;
  return bpf_redirect(OUT_IFINDEX, 0);
}
#endif

char LICENSE[] SEC("license") = "GPL";
