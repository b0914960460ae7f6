import { constants as os } from 'node:os'

/**
 * The part of the FUSE wire protocol (<linux/fuse.h>, 7.x) that reaches JS: the data requests of
 * the one-file tree the agent serves under the loop device. The native side (native/fuse.cc)
 * answers everything else. All fields are little-endian (host order on the platforms we run on).
 */
export const FuseOp = {
  Read: 15,
  Write: 16,
  Fsync: 20,
  Flush: 25,
  Fallocate: 43,
} as const

/** fuse_in_header: len u32, opcode u32, unique u64, nodeid u64, uid, gid, pid u32, extlen u16, pad u16. */
export const IN_HEADER_LENGTH = 40
/** fuse_read_in / fuse_write_in: fh u64, offset u64, size u32, flags u32, lock_owner u64, flags u32, pad u32. */
export const RW_IN_LENGTH = 40
/** Where a WRITE's data starts in the request. */
export const WRITE_DATA_OFFSET = IN_HEADER_LENGTH + RW_IN_LENGTH

/**
 * A FUSE-over-io_uring entry (native/fuse.cc), as JS sees it: struct fuse_uring_req_header (the
 * fuse_in_header at 0, the op's header at RING_OP_IN, struct fuse_uring_ent_in_out at 256 with
 * the payload's length at RING_PAYLOAD_SIZE_AT), and the payload (a WRITE's data) at RING_PAYLOAD.
 */
export const RING_OP_IN = 128
export const RING_PAYLOAD_SIZE_AT = 272
export const RING_PAYLOAD = 4096

/** fallocate(2) mode bits. */
export const FALLOC_FL_KEEP_SIZE = 0x01
export const FALLOC_FL_PUNCH_HOLE = 0x02
export const FALLOC_FL_ZERO_RANGE = 0x10

/** One data request, as the kernel sent it. */
export interface FuseRequest {
  opcode: number
  /** Request length (header included), as the header says. */
  length: number
  nodeid: number
  /** READ, WRITE, FALLOCATE: byte offset in the file. */
  offset: number
  /** READ, WRITE: bytes; FALLOCATE: the range's length. */
  size: number
  /** FALLOCATE: its mode; FSYNC: its flags. */
  mode: number
  /** WRITE: where its data lies in the request buffer (size bytes from here); else 0. */
  dataOffset: number
}

/**
 * Decodes the data request at the start of `buf` (whose `byteLength` is the slot's, not the
 * request's), read from /dev/fuse or, with `ring`, a ring entry (see RING_OP_IN). Returns
 * undefined for a request too short for its opcode or a WRITE whose data is not all there: such a
 * request is refused with EINVAL.
 */
export function decodeFuseRequest(view: DataView, ring = false): FuseRequest | undefined {
  if (view.byteLength < (ring ? RING_PAYLOAD : IN_HEADER_LENGTH)) return undefined
  // On the ring the op's header has a place of its own and the payload its own length.
  const length = ring
    ? IN_HEADER_LENGTH + RW_IN_LENGTH + view.getUint32(RING_PAYLOAD_SIZE_AT, true)
    : view.getUint32(0, true)
  const r: FuseRequest = {
    opcode: view.getUint32(4, true),
    length,
    nodeid: u64(view, 16),
    offset: 0,
    size: 0,
    mode: 0,
    dataOffset: 0,
  }
  if (length < IN_HEADER_LENGTH || length > view.byteLength) return undefined
  // The op's header is always all there on the ring.
  const a = ring ? RING_OP_IN : IN_HEADER_LENGTH
  const argsEnd = ring ? IN_HEADER_LENGTH + RING_OP_IN : length
  switch (r.opcode) {
    case FuseOp.Read:
    case FuseOp.Write:
      if (argsEnd < a + RW_IN_LENGTH) return undefined
      r.offset = u64(view, a + 8)
      r.size = view.getUint32(a + 16, true)
      if (r.opcode === FuseOp.Write) {
        r.dataOffset = ring ? RING_PAYLOAD : WRITE_DATA_OFFSET
        if (length < WRITE_DATA_OFFSET + r.size) return undefined
      }
      break
    case FuseOp.Fallocate:
      // fh u64, offset u64, length u64, mode u32, pad u32
      if (argsEnd < a + 32) return undefined
      r.offset = u64(view, a + 8)
      r.size = u64(view, a + 16)
      r.mode = view.getUint32(a + 24, true)
      break
    case FuseOp.Fsync:
      if (argsEnd < a + 16) return undefined
      r.mode = view.getUint32(a + 8, true)
      break
    case FuseOp.Flush:
      break
    default:
      return undefined
  }
  if (!Number.isSafeInteger(r.offset) || !Number.isSafeInteger(r.size)) return undefined
  return r
}

/** A u64 as a number; above 2^53 it comes out unsafe, which callers refuse. */
function u64(view: DataView, at: number): number {
  return view.getUint32(at, true) + view.getUint32(at + 4, true) * 0x1_0000_0000
}

/** The errno a FUSE reply carries (negated on the wire) for a block device's failure. */
export function fuseErrno(error: unknown): number {
  const code = (error as { code?: unknown } | null)?.code
  switch (code) {
    case 'out-of-range':
      return os.errno.EINVAL
    case 'read-only':
      return os.errno.EROFS
    case 'unsupported':
      return os.errno.EOPNOTSUPP
    case 'no-space':
      return os.errno.ENOSPC
    case 'timeout':
      return os.errno.ETIMEDOUT
    default:
      return os.errno.EIO
  }
}
