// nic-relay: the NIC path's two user-space hops with nothing else, for bench/nic (BENCH_RELAY=1).
//
// One process per end, single-threaded like vrio's daemons: it relays between a TAP device (frames
// of the NIC, GSO super-frames with their virtio_net_hdr) and a packet socket on the link. Each
// frame from the TAP goes out as one TCP-looking segment (Ethernet, IPv4, TCP, then the TAP's
// virtio_net_hdr and frame, sealed with AES-256-GCM under a per-direction nonce counter: the tag
// follows), itself a GSO super-frame when longer than one MSS; each such segment from the link is
// opened and written to the TAP. A TAP frame longer than one IPv4 packet can carry (the bridge's
// 64 KiB GRO frames, world → guest) still goes as one segment, its IP length wrapped: veth passes
// it, a real link would not (vrio cuts such a frame in two and the guest joins them), so the
// relay's figures that way are an upper bound. No handshake, no ACKs, no retransmission, no window: what is
// measured is the floor of two user-space hops with per-frame encryption, the part a native fast
// path in vrio cannot remove. AES-256-GCM goes through libipsec-mb when built with -DUSE_IPSEC_MB
// (as vrio's addon does when the library is there), else through OpenSSL.
//
// usage: nic-relay TAP IFNAME LOCAL_MAC PEER_MAC LOCAL_IP PEER_IP KEY_HEX64 [plain]
// Build: cc -O2 [-DUSE_IPSEC_MB ... -lIPSec_MB] -o nic-relay nic-relay.c -lcrypto. Runs until killed.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <linux/filter.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <net/ethernet.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef USE_IPSEC_MB
#include <intel-ipsec-mb.h>
#endif

enum { VNET = 10, ETH = 14, IPH = 20, TCPH = 20, HDRS = ETH + IPH + TCPH, TAG = 16, BATCH = 64, SLOT = 65600 };
enum { PORT = 7777, MSS = 1460 };

static uint8_t localMac[6], peerMac[6];
static uint32_t localIp, peerIp;
static uint8_t key[32];
static int plain;
static uint64_t txSeq;

static void die(const char* what) {
  perror(what);
  exit(1);
}

static void parseMac(const char* s, uint8_t* m) {
  if (sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) die("mac");
}

static uint16_t fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)sum;
}

static uint32_t sum16(const uint8_t* p, size_t n, uint32_t sum) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
  if (n & 1) sum += (uint32_t)(p[n - 1] << 8);
  return sum;
}

static void nonce(uint8_t* iv, uint32_t dir, uint64_t seq) {
  memcpy(iv, &dir, 4);
  memcpy(iv + 4, &seq, 8);
}

#ifdef USE_IPSEC_MB
static IMB_MGR* mb;
static struct gcm_key_data mbKey __attribute__((aligned(64)));

// Seals in place: `n` bytes at p, the tag written after them. Returns 0 on success.
static int seal(EVP_CIPHER_CTX* c, uint8_t* p, int n, uint32_t dir, uint64_t seq) {
  (void)c;
  uint8_t iv[12];
  struct gcm_context_data ctx;
  nonce(iv, dir, seq);
  IMB_AES256_GCM_INIT(mb, &mbKey, &ctx, iv, NULL, 0);
  IMB_AES256_GCM_ENC_UPDATE(mb, &mbKey, &ctx, p, p, (uint64_t)n);
  IMB_AES256_GCM_ENC_FINALIZE(mb, &mbKey, &ctx, p + n, TAG);
  return 0;
}

static int open_(EVP_CIPHER_CTX* c, uint8_t* p, int n, uint32_t dir, uint64_t seq) {
  (void)c;
  uint8_t iv[12], tag[TAG];
  struct gcm_context_data ctx;
  nonce(iv, dir, seq);
  IMB_AES256_GCM_INIT(mb, &mbKey, &ctx, iv, NULL, 0);
  IMB_AES256_GCM_DEC_UPDATE(mb, &mbKey, &ctx, p, p, (uint64_t)n);
  IMB_AES256_GCM_DEC_FINALIZE(mb, &mbKey, &ctx, tag, TAG);
  return CRYPTO_memcmp(tag, p + n, TAG) == 0 ? 0 : -1;
}
#else
// Seals in place: `n` bytes at p, the tag written after them. Returns 0 on success.
static int seal(EVP_CIPHER_CTX* c, uint8_t* p, int n, uint32_t dir, uint64_t seq) {
  uint8_t iv[12];
  int len;
  nonce(iv, dir, seq);
  if (!EVP_EncryptInit_ex(c, NULL, NULL, NULL, iv)) return -1;
  if (!EVP_EncryptUpdate(c, p, &len, p, n)) return -1;
  if (!EVP_EncryptFinal_ex(c, p + len, &len)) return -1;
  return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG, p + n) ? 0 : -1;
}

static int open_(EVP_CIPHER_CTX* c, uint8_t* p, int n, uint32_t dir, uint64_t seq) {
  uint8_t iv[12];
  int len;
  nonce(iv, dir, seq);
  if (!EVP_DecryptInit_ex(c, NULL, NULL, NULL, iv)) return -1;
  if (!EVP_DecryptUpdate(c, p, &len, p, n)) return -1;
  if (!EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG, p + n)) return -1;
  return EVP_DecryptFinal_ex(c, p + len, &len) > 0 ? 0 : -1;
}

#endif

// Wraps the TAP frame at out + VNET + HDRS + 8 (its own virtio_net_hdr first, `inner` bytes with it)
// into an outgoing segment at `out`: link virtio_net_hdr, Ethernet, IPv4, TCP. Returns its length.
static size_t wrap(EVP_CIPHER_CTX* c, uint8_t* out, size_t inner) {
  size_t payload = inner + 8 + (plain ? 0 : TAG);  // 8: the sequence number, in clear
  uint8_t* body = out + VNET + HDRS;
  uint64_t seq = txSeq++;
  memcpy(body, &seq, 8);
  if (!plain && seal(c, body + 8, (int)inner, localIp, seq) != 0) die("seal");
  uint8_t* e = out + VNET;
  memcpy(e, peerMac, 6);
  memcpy(e + 6, localMac, 6);
  e[12] = 0x08, e[13] = 0x00;
  uint8_t* ip = e + ETH;
  uint16_t total = (uint16_t)(IPH + TCPH + payload);
  memset(ip, 0, IPH);
  ip[0] = 0x45, ip[2] = total >> 8, ip[3] = total & 0xff, ip[6] = 0x40, ip[8] = 64, ip[9] = IPPROTO_TCP;
  memcpy(ip + 12, &localIp, 4);
  memcpy(ip + 16, &peerIp, 4);
  uint16_t ipsum = (uint16_t)~fold(sum16(ip, IPH, 0));
  ip[10] = ipsum >> 8, ip[11] = ipsum & 0xff;
  uint8_t* t = ip + IPH;
  memset(t, 0, TCPH);
  t[0] = PORT >> 8, t[1] = PORT & 0xff, t[2] = PORT >> 8, t[3] = PORT & 0xff;
  uint32_t s = htonl((uint32_t)seq);
  memcpy(t + 4, &s, 4);
  t[12] = 5 << 4, t[13] = 0x18, t[14] = 0xff, t[15] = 0xff;
  // CHECKSUM_PARTIAL: the pseudo-header sum, the kernel (or the peer's stack) finishes it.
  uint32_t ph = sum16(ip + 12, 8, 0) + IPPROTO_TCP + (uint32_t)(TCPH + payload);
  uint16_t pseudo = fold(ph);
  t[16] = pseudo >> 8, t[17] = pseudo & 0xff;
  struct virtio_net_hdr* h = (struct virtio_net_hdr*)out;
  memset(h, 0, VNET);
  h->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  h->csum_start = ETH + IPH;
  h->csum_offset = 16;
  if (payload > MSS) {
    h->gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
    h->gso_size = MSS;
    h->hdr_len = HDRS;
  }
  return VNET + HDRS + payload;
}

int main(int argc, char** argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: nic-relay TAP IFNAME LOCAL_MAC PEER_MAC LOCAL_IP PEER_IP KEY_HEX64 [plain]\n");
    return 2;
  }
  parseMac(argv[3], localMac);
  parseMac(argv[4], peerMac);
  if (inet_pton(AF_INET, argv[5], &localIp) != 1 || inet_pton(AF_INET, argv[6], &peerIp) != 1) die("ip");
  for (int i = 0; i < 32; i++)
    if (sscanf(argv[7] + 2 * i, "%2hhx", &key[i]) != 1) die("key");
  plain = argc > 8 && strcmp(argv[8], "plain") == 0;

  int tap = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (tap < 0) die("/dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", argv[1]);
  if (ioctl(tap, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
  if (ioctl(tap, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0) die("TUNSETOFFLOAD");

  int pkt = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_IP));
  if (pkt < 0) die("socket");
  int one = 1, big = 16 << 20;
  if (setsockopt(pkt, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) die("PACKET_VNET_HDR");
  setsockopt(pkt, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
  setsockopt(pkt, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
  setsockopt(pkt, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
  setsockopt(pkt, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
  // Only the relay's own segments wake it (IPv4, TCP, destination port PORT; IHL 5 as it sends).
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 12),          BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x0800, 0, 5),
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, ETH + 9),     BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, 0, 3),
      BPF_STMT(BPF_LD | BPF_H | BPF_ABS, ETH + IPH + 2), BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PORT, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, 0xffffffff),           BPF_STMT(BPF_RET | BPF_K, 0),
  };
  struct sock_fprog prog = {sizeof code / sizeof code[0], code};
  if (setsockopt(pkt, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0) die("SO_ATTACH_FILTER");
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_IP);
  sll.sll_ifindex = (int)if_nametoindex(argv[2]);
  if (sll.sll_ifindex == 0 || bind(pkt, (struct sockaddr*)&sll, sizeof sll) < 0) die("bind");

  EVP_CIPHER_CTX* enc = EVP_CIPHER_CTX_new();
  EVP_CIPHER_CTX* dec = EVP_CIPHER_CTX_new();
  if (!EVP_EncryptInit_ex(enc, EVP_aes_256_gcm(), NULL, key, NULL)) die("enc");
  if (!EVP_DecryptInit_ex(dec, EVP_aes_256_gcm(), NULL, key, NULL)) die("dec");
#ifdef USE_IPSEC_MB
  mb = alloc_mb_mgr(0);
  if (mb == NULL) die("alloc_mb_mgr");
  init_mb_mgr_auto(mb, NULL);
  if (imb_get_errno(mb) != 0) die("init_mb_mgr_auto");
  IMB_AES256_GCM_PRE(mb, key, &mbKey);
#endif

  static uint8_t tx[BATCH][VNET + HDRS + 8 + SLOT + TAG], rx[BATCH][SLOT + 64];
  struct mmsghdr txm[BATCH], rxm[BATCH];
  struct iovec txv[BATCH], rxv[BATCH];
  for (int i = 0; i < BATCH; i++) {
    memset(&rxm[i], 0, sizeof rxm[i]);
    rxv[i].iov_base = rx[i];
    rxv[i].iov_len = sizeof rx[i];
    rxm[i].msg_hdr.msg_iov = &rxv[i];
    rxm[i].msg_hdr.msg_iovlen = 1;
  }
  struct pollfd fds[2] = {{tap, POLLIN, 0}, {pkt, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0 && errno != EINTR) die("poll");
    // TAP → link: read until EAGAIN or a full batch, send the batch at once.
    int n = 0;
    while (n < BATCH) {
      ssize_t r = read(tap, tx[n] + VNET + HDRS + 8, SLOT);
      if (r < 0) break;
      size_t len = wrap(enc, tx[n], (size_t)r);
      txv[n].iov_base = tx[n];
      txv[n].iov_len = len;
      memset(&txm[n], 0, sizeof txm[n]);
      txm[n].msg_hdr.msg_iov = &txv[n];
      txm[n].msg_hdr.msg_iovlen = 1;
      n++;
    }
    for (int off = 0; off < n;) {
      int s = sendmmsg(pkt, txm + off, (unsigned)(n - off), 0);
      if (s <= 0) break;
      off += s;
    }
    // Link → TAP: a batch of segments, each checked, opened and written.
    int m = recvmmsg(pkt, rxm, BATCH, MSG_DONTWAIT, NULL);
    for (int i = 0; i < m; i++) {
      uint8_t* f = rx[i] + VNET;
      size_t len = rxm[i].msg_len;
      if (len < VNET + HDRS + 8 || f[12] != 0x08 || f[13] != 0 || f[ETH + 9] != IPPROTO_TCP ||
          memcmp(f + ETH + 12, &peerIp, 4) != 0 || f[ETH + IPH + 2] != (PORT >> 8) || f[ETH + IPH + 3] != (PORT & 0xff))
        continue;
      size_t payload = len - VNET - HDRS;
      uint8_t* body = f + HDRS;
      uint64_t seq;
      memcpy(&seq, body, 8);
      size_t inner = payload - 8 - (plain ? 0 : TAG);
      if (payload < 8 + (plain ? 0 : TAG) || (!plain && open_(dec, body + 8, (int)inner, peerIp, seq) != 0)) {
        continue;
      }
      if (write(tap, body + 8, inner) < 0 && errno != EAGAIN) die("write tap");
    }
  }
}
