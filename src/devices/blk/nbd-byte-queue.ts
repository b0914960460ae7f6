/** Received bytes as a queue of the socket's own chunks: nothing is joined unless it must be. */
export class ByteQueue {
  private bufs: Buffer[] = []
  private head = 0
  length = 0

  push(chunk: Buffer): void {
    if (chunk.length === 0) return
    this.bufs.push(chunk)
    this.length += chunk.length
  }

  /** The first `n` bytes as one view; copied into `scratch` only when they straddle chunks. */
  peek(n: number, scratch: Buffer): Buffer {
    const first = this.bufs[0]
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n)
    this.copy(scratch, 0, n, false)
    return scratch
  }

  /** Removes and returns `n` bytes: a view of one chunk when possible, else one exact-size copy. */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0)
    const first = this.bufs[0]
    if (first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n)
      this.skip(n)
      return view
    }
    const out = Buffer.allocUnsafe(n)
    this.copy(out, 0, n, true)
    return out
  }

  skip(n: number): void {
    this.length -= n
    while (n > 0) {
      const first = this.bufs[0]
      const here = first.length - this.head
      if (n < here) {
        this.head += n
        return
      }
      n -= here
      this.bufs.shift()
      this.head = 0
    }
  }

  /** Moves up to `n` bytes into `dest` at `at`; returns how many moved. */
  drainInto(dest: Uint8Array, at: number, n: number): number {
    const moved = Math.min(n, this.length)
    this.copy(dest, at, moved, true)
    return moved
  }

  private copy(dest: Uint8Array, at: number, n: number, consume: boolean): void {
    let i = 0
    let head = this.head
    let done = 0
    while (done < n) {
      const buf = this.bufs[i]
      const take = Math.min(buf.length - head, n - done)
      dest.set(buf.subarray(head, head + take), at + done)
      done += take
      head += take
      if (head === buf.length) {
        i++
        head = 0
      }
    }
    if (consume) {
      this.bufs.splice(0, i)
      this.head = head
      this.length -= n
    }
  }
}
