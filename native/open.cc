// Factories: open an AF_PACKET socket or a TAP queue (optionally inside another network
// namespace), and look up an interface's index/MAC/MTU.
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/filter.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "io.h"

namespace vrio {

namespace {

// Closes an fd on every early return; release() hands it over.
struct FdGuard {
  int fd = -1;
  ~FdGuard() {
    if (fd >= 0) close(fd);
  }
  int release() {
    int f = fd;
    fd = -1;
    return f;
  }
};

SysErr Fail(const char* syscall, const std::string& detail) { return SysErr{errno, syscall, detail}; }

std::string OptString(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  return v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
}

int64_t OptInt(const Napi::Object& o, const char* key, int64_t dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().Int64Value() : dflt;
}

bool OptBool(const Napi::Object& o, const char* key) { return o.Get(key).ToBoolean().Value(); }

// A classic BPF program given as a flat Uint32Array, four numbers per instruction (code, jt, jf, k).
// False when the option is there but malformed; an absent option is an empty program (no filter).
bool OptFilter(const Napi::Object& o, const char* key, std::vector<struct sock_filter>& out) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return true;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) return false;
  Napi::Uint32Array a = v.As<Napi::Uint32Array>();
  size_t n = a.ElementLength();
  if (n == 0 || n % 4 != 0 || n / 4 > BPF_MAXINSNS) return false;
  for (size_t i = 0; i < n; i += 4) {
    if (a[i] > 0xffff || a[i + 1] > 0xff || a[i + 2] > 0xff) return false;
    out.push_back(sock_filter{uint16_t(a[i]), uint8_t(a[i + 1]), uint8_t(a[i + 2]), a[i + 3]});
  }
  return true;
}

bool FillIfName(struct ifreq& ifr, const std::string& name) {
  std::memset(&ifr, 0, sizeof(ifr));
  if (name.size() >= IFNAMSIZ) return false;
  std::memcpy(ifr.ifr_name, name.c_str(), name.size());
  return true;
}

struct IfInfo {
  int ifindex = 0;
  int mtu = 0;
  uint8_t mac[6] = {0};
};

// Any socket works as the handle for these ioctls; they resolve the name in the socket's netns.
SysErr QueryInterface(int sock, const std::string& name, IfInfo& out) {
  struct ifreq ifr;
  if (!FillIfName(ifr, name)) return SysErr{ENODEV, "ioctl", name};
  if (ioctl(sock, SIOCGIFINDEX, &ifr) < 0) return Fail("ioctl", name);
  out.ifindex = ifr.ifr_ifindex;
  FillIfName(ifr, name);
  if (ioctl(sock, SIOCGIFMTU, &ifr) < 0) return Fail("ioctl", name);
  out.mtu = ifr.ifr_mtu;
  FillIfName(ifr, name);
  if (ioctl(sock, SIOCGIFHWADDR, &ifr) < 0) return Fail("ioctl", name);
  std::memcpy(out.mac, ifr.ifr_hwaddr.sa_data, 6);
  return {};
}

std::string MacString(const uint8_t* m) {
  char buf[18];
  std::snprintf(buf, sizeof(buf), "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
  return buf;
}

}  // namespace

Napi::Value ThrowSysErr(Napi::Env env, const SysErr& e) {
  Napi::Error err = Napi::Error::New(env, std::strerror(e.code));
  err.Set("errno", Napi::Number::New(env, e.code));
  err.Set("syscall", Napi::String::New(env, e.syscall));
  err.Set("detail", Napi::String::New(env, e.detail));
  err.ThrowAsJavaScriptException();
  return env.Undefined();
}

CallResult CallIo(napi_env env, napi_async_context context, napi_value fn, size_t argc, const napi_value* argv) {
  napi_value global;
  napi_value result;
  napi_status st = napi_get_global(env, &global);
  if (st == napi_ok) st = napi_make_callback(env, context, global, fn, argc, argv, &result);
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value exception;
    if (napi_get_and_clear_last_exception(env, &exception) == napi_ok && exception != nullptr) {
      napi_valuetype type;
      if (napi_typeof(env, exception, &type) == napi_ok && type != napi_undefined) {
        napi_fatal_exception(env, exception);
        return CallResult::Threw;
      }
    }
    return CallResult::Failed;  // a termination, not an exception of the handler's
  }
  return st == napi_ok ? CallResult::Ok : CallResult::Failed;
}

Napi::Value ThrowInvalid(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

SysErr RunInNetns(const std::string& nsPath, const std::function<SysErr()>& fn) {
  if (nsPath.empty()) return fn();
  SysErr result;
  // A throwaway thread: setns() changes only the calling thread's namespace, and this thread
  // dies right after, so neither the main thread nor libuv's threads ever switch.
  std::thread t([&] {
    int nsfd = open(nsPath.c_str(), O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) {
      result = Fail("open", nsPath);
      return;
    }
    int r = setns(nsfd, CLONE_NEWNET);
    int e = errno;
    close(nsfd);
    if (r < 0) {
      result = SysErr{e, "setns", nsPath};
      return;
    }
    result = fn();
  });
  t.join();
  return result;
}

// openPacket({ifname, netns?, protocol, vnetHdr, ignoreOutgoing, qdiscBypass, fanoutGroup,
//             fanoutMode, rcvBuf, sndBuf, filter?}) -> {handle, ifindex, mtu, mac, filterOutgoing, filtered}
//   filter: a classic BPF program (SO_ATTACH_FILTER, see OptFilter), attached before bind() so that
//   no frame it would refuse is ever queued.
Napi::Value OpenPacket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) return ThrowInvalid(env, "openPacket(options)");
  Napi::Object o = info[0].As<Napi::Object>();
  const std::string ifname = OptString(o, "ifname");
  const std::string netns = OptString(o, "netns");
  const int protocol = int(OptInt(o, "protocol", ETH_P_ALL));
  const bool vnetHdr = OptBool(o, "vnetHdr");
  const bool ignoreOutgoing = OptBool(o, "ignoreOutgoing");
  const bool qdiscBypass = OptBool(o, "qdiscBypass");
  const int64_t fanoutGroup = OptInt(o, "fanoutGroup", -1);
  const int fanoutMode = int(OptInt(o, "fanoutMode", PACKET_FANOUT_HASH));
  const int rcvBuf = int(OptInt(o, "rcvBuf", 0));
  const int sndBuf = int(OptInt(o, "sndBuf", 0));
  std::vector<struct sock_filter> filter;
  if (!OptFilter(o, "filter", filter)) return ThrowInvalid(env, "openPacket: filter must be a Uint32Array of 4*n numbers");

  FdGuard fd;
  IfInfo ifi;
  bool filterOutgoing = false;
  SysErr err = RunInNetns(netns, [&]() -> SysErr {
    // Protocol 0 at creation: nothing is queued on the socket before bind() picks the interface.
    fd.fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd.fd < 0) return Fail("socket", ifname);
    SysErr e = QueryInterface(fd.fd, ifname, ifi);
    if (e.failed()) return e;
    int one = 1;
    if (vnetHdr && setsockopt(fd.fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0) {
      return Fail("setsockopt", "PACKET_VNET_HDR");
    }
    if (ignoreOutgoing && setsockopt(fd.fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0) {
      if (errno != ENOPROTOOPT) return Fail("setsockopt", "PACKET_IGNORE_OUTGOING");
      filterOutgoing = true;  // kernel < 4.20: the reader drops PACKET_OUTGOING frames instead
    }
    if (qdiscBypass && setsockopt(fd.fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0) {
      return Fail("setsockopt", "PACKET_QDISC_BYPASS");
    }
    // The *FORCE variants (root) lift the net.core.[rw]mem_max cap; fall back for unprivileged use.
    if (rcvBuf > 0 && setsockopt(fd.fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvBuf, sizeof(rcvBuf)) < 0 &&
        setsockopt(fd.fd, SOL_SOCKET, SO_RCVBUF, &rcvBuf, sizeof(rcvBuf)) < 0) {
      return Fail("setsockopt", "SO_RCVBUF");
    }
    if (sndBuf > 0 && setsockopt(fd.fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndBuf, sizeof(sndBuf)) < 0 &&
        setsockopt(fd.fd, SOL_SOCKET, SO_SNDBUF, &sndBuf, sizeof(sndBuf)) < 0) {
      return Fail("setsockopt", "SO_SNDBUF");
    }
    if (!filter.empty()) {
      struct sock_fprog prog = {uint16_t(filter.size()), filter.data()};
      if (setsockopt(fd.fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0) {
        return Fail("setsockopt", "SO_ATTACH_FILTER");
      }
    }
    struct sockaddr_ll sll;
    std::memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(uint16_t(protocol));
    sll.sll_ifindex = ifi.ifindex;
    if (bind(fd.fd, reinterpret_cast<struct sockaddr*>(&sll), sizeof(sll)) < 0) return Fail("bind", ifname);
    if (fanoutGroup >= 0) {
      // Needs a bound, receiving socket (protocol != 0).
      int arg = int(fanoutGroup & 0xffff) | (fanoutMode << 16);
      if (setsockopt(fd.fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof(arg)) < 0) return Fail("setsockopt", "PACKET_FANOUT");
    }
    return {};
  });
  if (err.failed()) return ThrowSysErr(env, err);

  Napi::Object out = Napi::Object::New(env);
  out.Set("handle", Channel::Create(env, Kind::Packet, fd.release(), vnetHdr, filterOutgoing));
  out.Set("ifindex", ifi.ifindex);
  out.Set("mtu", ifi.mtu);
  out.Set("mac", MacString(ifi.mac));
  out.Set("filterOutgoing", filterOutgoing);
  out.Set("filtered", !filter.empty());
  return out;
}

// openTap({name, netns?, path?, vnetHdr, offloads (TUN_F_* bits), multiQueue, persist})
//   persist: a device this call creates outlives its fds (delete it with `ip link del`).
//   path: a macvtap character device (/dev/tapN) to open instead of /dev/net/tun; name is then the
//   macvtap interface's name (the device exists already and is left as it is).
//   -> {handle, name, ifindex, mtu, mac, created, offloads}
Napi::Value OpenTap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) return ThrowInvalid(env, "openTap(options)");
  Napi::Object o = info[0].As<Napi::Object>();
  const std::string name = OptString(o, "name");
  const std::string netns = OptString(o, "netns");
  const std::string path = OptString(o, "path");
  const bool vnetHdr = OptBool(o, "vnetHdr");
  const bool multiQueue = OptBool(o, "multiQueue");
  const bool persist = OptBool(o, "persist");
  unsigned int offloads = unsigned(OptInt(o, "offloads", 0));
  // Offloads without the header would hand us frames with unfinished checksums and no way to tell.
  if (offloads != 0 && !vnetHdr) return ThrowInvalid(env, "TAP offloads require vnetHdr");

  FdGuard fd;
  IfInfo ifi;
  std::string actualName;
  bool created = false;
  SysErr err = RunInNetns(netns, [&]() -> SysErr {
    FdGuard ctl;
    ctl.fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (ctl.fd < 0) return Fail("socket", "AF_INET control socket");
    struct ifreq ifr;
    if (!FillIfName(ifr, name)) return SysErr{EINVAL, "ioctl", "TUNSETIFF: name longer than 15 bytes"};
    bool existed = !path.empty() ||
                   (!name.empty() && name.find('%') == std::string::npos && ioctl(ctl.fd, SIOCGIFINDEX, &ifr) == 0);

    // tun binds the device to the opener's netns, so this open must happen in the namespace too.
    const std::string dev = path.empty() ? "/dev/net/tun" : path;
    fd.fd = open(dev.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd.fd < 0) return Fail("open", dev);
    FillIfName(ifr, path.empty() ? name : "");
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnetHdr ? IFF_VNET_HDR : 0) | (multiQueue ? IFF_MULTI_QUEUE : 0);
    if (ioctl(fd.fd, TUNSETIFF, &ifr) < 0) return Fail("ioctl", "TUNSETIFF " + name);
    if (path.empty()) actualName.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
    else actualName = name;  // macvtap's TUNSETIFF only sets flags
    if (vnetHdr) {
      int sz = 10;  // struct virtio_net_hdr, the layout src/io/virtio-net-hdr.ts speaks
      if (ioctl(fd.fd, TUNSETVNETHDRSZ, &sz) < 0) return Fail("ioctl", "TUNSETVNETHDRSZ");
    }
    if (offloads != 0 || vnetHdr) {
      if (ioctl(fd.fd, TUNSETOFFLOAD, offloads) < 0) {
        // UFO was removed from the kernel for a while; take it as optional.
        if (!(errno == EINVAL && (offloads & TUN_F_UFO))) return Fail("ioctl", "TUNSETOFFLOAD");
        offloads &= ~unsigned(TUN_F_UFO);
        if (ioctl(fd.fd, TUNSETOFFLOAD, offloads) < 0) return Fail("ioctl", "TUNSETOFFLOAD");
      }
    }
    if (!existed) {
      // Non-persistent is the default for a device this fd created; say so explicitly so the
      // device disappears with its last fd.
      if (ioctl(fd.fd, TUNSETPERSIST, persist ? 1 : 0) < 0) return Fail("ioctl", "TUNSETPERSIST");
      created = true;
    }
    return QueryInterface(ctl.fd, actualName, ifi);
  });
  if (err.failed()) return ThrowSysErr(env, err);

  Napi::Object out = Napi::Object::New(env);
  out.Set("handle", Channel::Create(env, Kind::Tap, fd.release(), vnetHdr, false));
  out.Set("name", actualName);
  out.Set("ifindex", ifi.ifindex);
  out.Set("mtu", ifi.mtu);
  out.Set("mac", MacString(ifi.mac));
  out.Set("created", created);
  out.Set("offloads", offloads);
  return out;
}

// interfaceInfo(name, netns?) -> {ifindex, mtu, mac}
Napi::Value InterfaceInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) return ThrowInvalid(env, "interfaceInfo(name, netns?)");
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  const std::string netns = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  IfInfo ifi;
  SysErr err = RunInNetns(netns, [&]() -> SysErr {
    FdGuard ctl;
    ctl.fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (ctl.fd < 0) return Fail("socket", "AF_INET control socket");
    return QueryInterface(ctl.fd, name, ifi);
  });
  if (err.failed()) return ThrowSysErr(env, err);
  Napi::Object out = Napi::Object::New(env);
  out.Set("ifindex", ifi.ifindex);
  out.Set("mtu", ifi.mtu);
  out.Set("mac", MacString(ifi.mac));
  return out;
}

}  // namespace vrio
