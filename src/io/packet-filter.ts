/**
 * The kernel filter of a daemon's packet socket: a classic BPF program (SO_ATTACH_FILTER) that
 * passes only the daemon's own channel segments, so foreign traffic on a shared interface (other
 * hosts' TCP, UDP, ARP, broadcasts, qemu-nbd or VXLAN next door) is dropped in the kernel and
 * never wakes the daemon. Pure: the program is built here and handed to the addon.
 *
 * A frame passes when it is what the transport could take as ours (see Endpoint.receive): Ethernet
 * II to our MAC, IPv4 (EtherType at offset 12: the kernel has already moved an outer VLAN tag into
 * the skb before packet sockets see the frame, as the transport sees it too), not a fragment, TCP,
 * to our address, and either to `localPort` or from `remotePort`, the TCP header found past any IPv4
 * options. Nothing is checked that the transport counts as a drop of an otherwise-ours segment
 * (checksums, header lengths, flags, seal): those still reach it and are counted there. A GSO
 * super-frame carries the same headers as its segments and passes the same way.
 */
import { ETHERTYPE_IPV4 } from '../wire/ethernet.ts'
import { IP_OFFSET } from '../wire/frame.ts'
import { IP_PROTOCOL_TCP } from '../wire/ipv4.ts'

/** One classic BPF instruction (struct sock_filter). */
export interface SockFilter {
  code: number
  /** Instructions to skip when the jump's condition holds / does not. */
  jt: number
  jf: number
  k: number
}

// Opcode parts (linux/bpf_common.h) and the instructions built from them.
const BPF_LD = 0x00
const BPF_LDX = 0x01
const BPF_JMP = 0x05
const BPF_RET = 0x06
const BPF_W = 0x00
const BPF_H = 0x08
const BPF_B = 0x10
const BPF_ABS = 0x20
const BPF_IND = 0x40
const BPF_MSH = 0xa0
const BPF_JEQ = 0x10
const BPF_JSET = 0x40
const BPF_K = 0x00

/** A = the 32-bit word at k. */
export const LD_W_ABS = BPF_LD | BPF_W | BPF_ABS
/** A = the 16-bit word at k. */
export const LD_H_ABS = BPF_LD | BPF_H | BPF_ABS
/** A = the byte at k. */
export const LD_B_ABS = BPF_LD | BPF_B | BPF_ABS
/** A = the 16-bit word at X + k. */
export const LD_H_IND = BPF_LD | BPF_H | BPF_IND
/** X = 4 × (the byte at k & 0x0f): an IPv4 header's length. */
export const LDX_B_MSH = BPF_LDX | BPF_B | BPF_MSH
/** Jump by jt if A == k, else by jf. */
export const JEQ_K = BPF_JMP | BPF_JEQ | BPF_K
/** Jump by jt if A & k, else by jf. */
export const JSET_K = BPF_JMP | BPF_JSET | BPF_K
/** Accept k bytes of the frame (0: drop it). */
export const RET_K = BPF_RET | BPF_K

/** The most a return value can keep: the whole frame, GSO super-frames included. */
const WHOLE_FRAME = 0xffff_ffff

export interface VrioFilterOptions {
  /** The daemon's MAC and IPv4 address (as the transport holds them). */
  mac: number
  ip: number
  /** Segments to this TCP port are ours (a guest's listen port). */
  localPort?: number
  /** Segments from this TCP port are ours (the IOhyp: the guests' port). */
  remotePort?: number
  /**
   * Only segments from these IPv4 addresses are ours (an iocore: its guests'); none given, any
   * source. An empty list passes nothing.
   */
  peers?: readonly number[]
}

/** Symbolic jump target while the program is built; resolved to relative offsets at the end. */
type Target = number | 'accept' | 'drop'

interface Step {
  code: number
  k: number
  jt?: Target
  jf?: Target
}

/**
 * The program that passes only the daemon's own segments (see the file comment). With neither port
 * given, every TCP segment to the daemon's MAC and address passes.
 */
export function vrioPacketFilter(o: VrioFilterOptions): SockFilter[] {
  const tcp = IP_OFFSET // X holds the IPv4 header length: the TCP header is at X + IP_OFFSET
  const steps: Step[] = [
    { code: LD_H_ABS, k: 12 },
    { code: JEQ_K, k: ETHERTYPE_IPV4, jf: 'drop' },
    { code: LD_W_ABS, k: IP_OFFSET + 16 },
    { code: JEQ_K, k: o.ip >>> 0, jf: 'drop' },
    { code: LD_B_ABS, k: IP_OFFSET + 9 },
    { code: JEQ_K, k: IP_PROTOCOL_TCP, jf: 'drop' },
    // MF flag or a fragment offset: the transport refuses fragments (vrio always sets DF).
    { code: LD_H_ABS, k: IP_OFFSET + 6 },
    { code: JSET_K, k: 0x3fff, jt: 'drop' },
    // Our MAC: the upper 32 bits, then the lower 16.
    { code: LD_W_ABS, k: 0 },
    { code: JEQ_K, k: Math.floor(o.mac / 0x1_0000) >>> 0, jf: 'drop' },
    { code: LD_H_ABS, k: 4 },
    { code: JEQ_K, k: o.mac % 0x1_0000, jf: 'drop' },
  ]
  if (o.peers !== undefined) {
    const peers = o.peers
    steps.push({ code: LD_W_ABS, k: IP_OFFSET + 12 })
    if (peers.length === 0) steps.push({ code: JEQ_K, k: 0, jt: 'drop', jf: 'drop' })
    // A match skips the rest of the list; no match on the last one drops.
    peers.forEach((ip, i) => {
      const last = i === peers.length - 1
      steps.push({ code: JEQ_K, k: ip >>> 0, jt: peers.length - 1 - i, jf: last ? 'drop' : 0 })
    })
  }
  const ports: [offset: number, port: number][] = []
  if (o.localPort !== undefined) ports.push([tcp + 2, o.localPort])
  if (o.remotePort !== undefined) ports.push([tcp, o.remotePort])
  if (ports.length > 0) {
    steps.push({ code: LDX_B_MSH, k: IP_OFFSET })
    ports.forEach(([offset, port], i) => {
      steps.push({ code: LD_H_IND, k: offset })
      steps.push({ code: JEQ_K, k: port, jt: 'accept', jf: i === ports.length - 1 ? 'drop' : 0 })
    })
  }
  steps.push({ code: RET_K, k: WHOLE_FRAME }, { code: RET_K, k: 0 })
  const accept = steps.length - 2
  const drop = steps.length - 1
  const offset = (at: number, target: Target | undefined): number => {
    if (target === undefined || typeof target === 'number') return target ?? 0
    return (target === 'accept' ? accept : drop) - at - 1
  }
  return steps.map((s, at) => ({ code: s.code, jt: offset(at, s.jt), jf: offset(at, s.jf), k: s.k }))
}

/** The flat form the addon takes: code, jt, jf, k per instruction. */
export function flattenFilter(program: readonly SockFilter[]): Uint32Array {
  const out = new Uint32Array(program.length * 4)
  program.forEach((p, i) => {
    out.set([p.code, p.jt, p.jf, p.k >>> 0], i * 4)
  })
  return out
}
