import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { describe, it } from 'node:test'
import { native } from '../../src/io/native.ts'
import {
  aeadImplementation,
  type FrameAead,
  type FrameSource,
  NativeFrameAead,
  NodeFrameAead,
  SEAL_CIPHER_AES_256_GCM,
  SEAL_CIPHER_CHACHA20_POLY1305,
  SEAL_MAX_CHUNKS,
  type SealCipher,
} from '../../src/transport/aead.ts'
import {
  encodeTcpFrameHeaders,
  IP_OFFSET,
  newTcpFrame,
  TCP_OFFSET,
  tcpFrameHeaderLength,
} from '../../src/wire/frame.ts'
import { SEAL_TAG_OFFSET, TCP_ACK, TCP_PSH } from '../../src/wire/tcp.ts'

/** A data frame with SEGMENT and SEAL options and `payload`, encoded but not sealed; and where its parts are. */
function dataFrame(payload: Uint8Array, counter: number) {
  const f = newTcpFrame()
  f.ethernet.source = 0x02_00_00_00_00_0a
  f.ethernet.destination = 0x02_00_00_00_00_0b
  f.ip.source = 0x0a00_0001
  f.ip.destination = 0x0a00_0002
  Object.assign(f.tcp, { sourcePort: 50_000, destinationPort: 7860, seq: 0x1122_3344, ack: 0x5566_7788 })
  f.tcp.flags = TCP_ACK | TCP_PSH
  f.tcp.window = 512
  Object.assign(f.tcp.options.vrio, {
    present: true,
    flags: 1,
    messageStart: 0x1122_3300,
    messageLength: 4096,
  })
  Object.assign(f.tcp.options.seal, { present: true, epoch: 1, counter: counter >>> 0 })
  const headerLength = tcpFrameHeaderLength(f.tcp.options)
  const frame = Buffer.alloc(headerLength + payload.length)
  frame.set(payload, headerLength)
  encodeTcpFrameHeaders(frame, f, payload.length)
  return { frame, payloadOffset: headerLength, tagOffset: f.tcp.options.seal.offset + SEAL_TAG_OFFSET }
}

const CIPHERS: [string, SealCipher][] = [
  ['AES-256-GCM', SEAL_CIPHER_AES_256_GCM],
  ['ChaCha20-Poly1305', SEAL_CIPHER_CHACHA20_POLY1305],
]

function seal(aead: FrameAead, frame: Buffer, payloadOffset: number, tagOffset: number, counter: number) {
  aead.seal(frame, IP_OFFSET, TCP_OFFSET, payloadOffset, frame.length, tagOffset, counter)
}

/** Seals `d` (from dataFrame) reading the plaintext from `src` at `srcOffset` (see FrameAead.seal). */
function sealFrom(
  aead: FrameAead,
  d: ReturnType<typeof dataFrame>,
  counter: number,
  src: FrameSource,
  srcOffset: number,
  inFrame?: number,
) {
  aead.seal(
    d.frame,
    IP_OFFSET,
    TCP_OFFSET,
    d.payloadOffset,
    d.frame.length,
    d.tagOffset,
    counter,
    src,
    srcOffset,
    inFrame,
  )
}
function open(aead: FrameAead, frame: Buffer, payloadOffset: number, tagOffset: number, counter: number) {
  return aead.open(frame, IP_OFFSET, TCP_OFFSET, payloadOffset, frame.length, tagOffset, counter)
}

describe('frame AEAD: the addon against node:crypto', () => {
  const Native = NativeFrameAead
  it('the addon has one, of this build (numbers through the argument array)', () => {
    const proto = (native().FrameAead as unknown as { prototype?: Record<string, unknown> } | undefined)
      ?.prototype
    assert.equal(typeof proto?.sealFrame, 'function', 'native FrameAead missing or stale: rebuild the addon')
  })
  it("AES-256-GCM runs on Intel's multi-buffer library where it is installed and the CPU has AES-NI; VRIO_AEAD=openssl picks OpenSSL", () => {
    const aes = aeadImplementation(SEAL_CIPHER_AES_256_GCM)
    assert.equal(aeadImplementation(SEAL_CIPHER_CHACHA20_POLY1305), 'openssl')
    if (process.env.VRIO_AEAD === 'openssl') assert.equal(aes, 'openssl')
    else if (
      existsSync('/usr/include/intel-ipsec-mb.h') &&
      /\baes\b/.test(readFileSync('/proc/cpuinfo', 'utf8'))
    )
      assert.match(
        aes,
        /^ipsec-mb-/,
        'the addon was built without libipsec-mb (scripts/setup.sh installs it)',
      )
    else assert.equal(aes, 'openssl')
  })
  if (process.env.VRIO_AEAD !== 'openssl') {
    it("every test here passes with VRIO_AEAD=openssl too (the addon's OpenSSL path)", () => {
      // A test file of its own (not a subtest of this run: without NODE_TEST_CONTEXT).
      const { NODE_TEST_CONTEXT: _, ...env } = process.env
      const childEnv = { ...env, VRIO_AEAD: 'openssl' }
      const child = spawnSync(
        process.execPath,
        ['--enable-source-maps', '--test', new URL(import.meta.url).pathname],
        {
          env: childEnv,
          encoding: 'utf8',
        },
      )
      assert.equal(child.status, 0, `${child.stdout.slice(-3000)}${child.stderr.slice(-2000)}`)
      assert.match(child.stdout, /# fail 0/)
    })
  }
  for (const [name, cipher] of CIPHERS) {
    it(`${name}: both seal to the same bytes, each opens the other's, for payloads of 0 to 64000 bytes`, () => {
      const key = randomBytes(32)
      const n = new Native(cipher, key)
      const js = new NodeFrameAead(cipher, key)
      for (const size of [0, 1, 15, 16, 17, 1000, 1418, 9000, 64_000]) {
        const payload = randomBytes(size)
        // A counter above 2^32 checks the nonce's high word too.
        const counter = size === 9000 ? 2 ** 40 + 7 : size * 3 + 1
        const a = dataFrame(payload, counter)
        const b = dataFrame(payload, counter)
        seal(n, a.frame, a.payloadOffset, a.tagOffset, counter)
        seal(js, b.frame, b.payloadOffset, b.tagOffset, counter)
        assert.deepEqual(a.frame, b.frame, `sealed bytes differ at ${size}`)
        if (size >= 16) assert.notDeepEqual(a.frame.subarray(a.payloadOffset), payload, 'payload encrypted')
        const c = Buffer.from(a.frame)
        assert.ok(open(js, a.frame, a.payloadOffset, a.tagOffset, counter))
        assert.ok(open(n, c, b.payloadOffset, b.tagOffset, counter))
        assert.deepEqual(a.frame.subarray(a.payloadOffset), payload)
        assert.deepEqual(c.subarray(a.payloadOffset), payload)
      }
      n.destroy()
      js.destroy()
    })

    it(`${name}: each rejects every single-bit flip of addresses, header, options, payload and tag, and another counter or key`, () => {
      const key = randomBytes(32)
      const impls: [string, FrameAead][] = [
        ['native', new Native(cipher, key)],
        ['node', new NodeFrameAead(cipher, key)],
      ]
      const payload = randomBytes(40)
      const sealed = dataFrame(payload, 99)
      seal(impls[0][1], sealed.frame, sealed.payloadOffset, sealed.tagOffset, 99)
      // Authenticated: the IPv4 addresses (frame bytes 26..33) and the whole TCP segment but its checksum.
      const positions: number[] = []
      for (let i = IP_OFFSET + 12; i < IP_OFFSET + 20; i++) positions.push(i)
      for (let i = TCP_OFFSET; i < sealed.frame.length; i++) {
        if (i === TCP_OFFSET + 16 || i === TCP_OFFSET + 17) continue
        positions.push(i)
      }
      for (const [implName, aead] of impls) {
        for (const at of positions) {
          for (let bit = 0; bit < 8; bit++) {
            const f = Buffer.from(sealed.frame)
            f[at] ^= 1 << bit
            assert.equal(
              open(aead, f, sealed.payloadOffset, sealed.tagOffset, 99),
              false,
              `${implName}: flip of bit ${bit} at byte ${at} accepted`,
            )
          }
        }
        assert.equal(open(aead, Buffer.from(sealed.frame), sealed.payloadOffset, sealed.tagOffset, 98), false)
        assert.ok(open(aead, Buffer.from(sealed.frame), sealed.payloadOffset, sealed.tagOffset, 99))
      }
      const other = new NodeFrameAead(cipher, randomBytes(32))
      assert.equal(open(other, Buffer.from(sealed.frame), sealed.payloadOffset, sealed.tagOffset, 99), false)
    })
  }

  for (const [name, cipher] of CIPHERS) {
    it(`${name}: sealing from a separate source (the copy into the frame) gives the same bytes as copy, then seal`, () => {
      const key = randomBytes(32)
      const impls: [string, FrameAead][] = [
        ['native', new Native(cipher, key)],
        ['node', new NodeFrameAead(cipher, key)],
      ]
      for (const size of [1, 1424, 64_000]) {
        const source = randomBytes(size + 50)
        const reference = dataFrame(source.subarray(7, 7 + size), 5)
        seal(impls[1][1], reference.frame, reference.payloadOffset, reference.tagOffset, 5)
        for (const [implName, aead] of impls) {
          const target = dataFrame(Buffer.alloc(size, 0xee), 5)
          sealFrom(aead, target, 5, source, 7)
          assert.deepEqual(target.frame, reference.frame, `${implName} at ${size}`)
          // The first bytes in the frame already (a header chunk copied), the rest from the source.
          for (const inFrame of [1, 17, size]) {
            if (inFrame > size) continue
            const split = dataFrame(Buffer.alloc(size, 0xee), 5)
            split.frame.set(source.subarray(7, 7 + inFrame), split.payloadOffset)
            sealFrom(aead, split, 5, source, 7 + inFrame, inFrame)
            assert.deepEqual(split.frame, reference.frame, `${implName} at ${size}, ${inFrame} in the frame`)
          }
        }
      }
    })
  }

  for (const [name, cipher] of CIPHERS) {
    it(`${name}: sealing from scattered chunks (a message's header and body) gives node:crypto's bytes of copy, then seal`, () => {
      const key = randomBytes(32)
      const impls: [string, FrameAead][] = [
        ['native', new Native(cipher, key)],
        ['node', new NodeFrameAead(cipher, key)],
      ]
      // Chunk sizes around AES blocks (16), GHASH's and ChaCha's blocks (64), a frame's payload.
      const layouts = [
        [1],
        [16, 64_000],
        [7, 13, 1, 64_010],
        [1424, 1424, 1424],
        [32, 0, 15, 17, 63, 65, 3000],
      ]
      for (const sizes of layouts) {
        const chunks = sizes.map((n) => randomBytes(n))
        const whole = Buffer.concat(chunks)
        for (const [offset, size] of [
          [0, whole.length],
          [1, whole.length - 1],
          [5, Math.min(1400, whole.length - 5)],
          [whole.length - 1, 1],
        ]) {
          if (size <= 0 || offset + size > whole.length) continue
          const reference = dataFrame(whole.subarray(offset, offset + size), 21)
          seal(impls[1][1], reference.frame, reference.payloadOffset, reference.tagOffset, 21)
          for (const [implName, aead] of impls) {
            const target = dataFrame(Buffer.alloc(size, 0xee), 21)
            sealFrom(aead, target, 21, chunks, offset)
            assert.deepEqual(
              target.frame,
              reference.frame,
              `${implName}, chunks ${sizes}, [${offset}, +${size})`,
            )
            assert.ok(
              aead.open(
                Buffer.from(target.frame),
                IP_OFFSET,
                TCP_OFFSET,
                target.payloadOffset,
                target.frame.length,
                target.tagOffset,
                21,
              ),
            )
          }
        }
      }
    })
  }

  for (const [name, cipher] of CIPHERS) {
    it(`${name}: a frame that fails to open gets its ciphertext back when sealed again under the same counter`, () => {
      const key = randomBytes(32)
      for (const aead of [new Native(cipher, key), new NodeFrameAead(cipher, key)]) {
        for (const size of [1, 1424, 64_000]) {
          const plain = randomBytes(size)
          const d = dataFrame(plain, 9)
          seal(aead, d.frame, d.payloadOffset, d.tagOffset, 9)
          d.frame[d.tagOffset] ^= 1 // a piece of a split record: its tag is the whole record's
          const received = Buffer.from(d.frame)
          assert.equal(open(aead, d.frame, d.payloadOffset, d.tagOffset, 9), false)
          // Decrypted in place before the tag is checked (compared with the plaintext: against the
          // ciphertext a 1-byte payload would be unchanged whenever its keystream byte is 0).
          assert.deepEqual(
            Buffer.from(d.frame.subarray(d.payloadOffset, d.payloadOffset + size)),
            plain,
            'decrypted in place before the tag is checked',
          )
          const tag = Buffer.from(d.frame.subarray(d.tagOffset, d.tagOffset + 12))
          seal(aead, d.frame, d.payloadOffset, d.tagOffset, 9)
          d.frame.set(tag, d.tagOffset)
          assert.deepEqual(d.frame, received)
        }
      }
    })
  }

  for (const [name, cipher] of CIPHERS) {
    it(`${name}: opening into a separate destination (the copy out of the frame) gives the plaintext there and leaves the frame as it came`, () => {
      const key = randomBytes(32)
      for (const aead of [new Native(cipher, key), new NodeFrameAead(cipher, key)]) {
        for (const size of [1, 1424, 64_000]) {
          const payload = randomBytes(size)
          const d = dataFrame(payload, 11)
          seal(aead, d.frame, d.payloadOffset, d.tagOffset, 11)
          const received = Buffer.from(d.frame)
          const dst = Buffer.alloc(size + 20, 0xee)
          const open = (frame: Buffer) =>
            aead.open(frame, IP_OFFSET, TCP_OFFSET, d.payloadOffset, frame.length, d.tagOffset, 11, dst, 13)
          assert.ok(open(d.frame))
          assert.deepEqual(d.frame, received, 'the frame is left as it came')
          assert.deepEqual(dst.subarray(13, 13 + size), payload)
          assert.ok(
            dst.subarray(0, 13).every((b) => b === 0xee) && dst.subarray(13 + size).every((b) => b === 0xee),
          )
          // A frame that fails is left as it came too (still ciphertext: no restore pass needed).
          const bad = Buffer.from(received)
          bad[d.tagOffset] ^= 1
          assert.equal(open(bad), false)
          bad[d.tagOffset] ^= 1
          assert.deepEqual(bad, received)
        }
      }
    })
  }

  it('the addon refuses offsets outside the frame', () => {
    const n = new Native(SEAL_CIPHER_AES_256_GCM, randomBytes(32))
    const { frame, payloadOffset, tagOffset } = dataFrame(randomBytes(10), 1)
    assert.throws(() => n.seal(frame, IP_OFFSET, TCP_OFFSET, payloadOffset, frame.length + 1, tagOffset, 1))
    assert.throws(() =>
      n.open(frame, IP_OFFSET, TCP_OFFSET, payloadOffset, frame.length, payloadOffset - 4, 1),
    )
    assert.throws(() => n.open(frame, IP_OFFSET, TCP_OFFSET, payloadOffset, frame.length, tagOffset, -1))
    const src = randomBytes(5)
    assert.throws(() =>
      n.seal(frame, IP_OFFSET, TCP_OFFSET, payloadOffset, frame.length, tagOffset, 1, src, 0),
    )
    const big = randomBytes(64)
    assert.throws(() =>
      n.seal(frame, IP_OFFSET, TCP_OFFSET, payloadOffset, frame.length, tagOffset, 1, big, 0, 11),
    )
    // Chunks too short, not bytes, too many, or one overlapping the payload.
    const sealFrom = (chunks: readonly Uint8Array[], offset = 0) =>
      n.seal(frame, IP_OFFSET, TCP_OFFSET, payloadOffset, frame.length, tagOffset, 1, chunks, offset)
    assert.throws(() => sealFrom([randomBytes(4), randomBytes(5)]))
    assert.throws(() => sealFrom([randomBytes(4), randomBytes(6)], 1))
    assert.throws(() => sealFrom([randomBytes(4), new Uint16Array(6) as unknown as Uint8Array]))
    const long = dataFrame(randomBytes(SEAL_MAX_CHUNKS + 1), 1)
    const bytes = Array.from({ length: SEAL_MAX_CHUNKS + 1 }, () => randomBytes(1))
    const sealLong = (chunks: readonly Uint8Array[]) =>
      n.seal(
        long.frame,
        IP_OFFSET,
        TCP_OFFSET,
        long.payloadOffset,
        long.frame.length,
        long.tagOffset,
        1,
        chunks,
        0,
      )
    assert.throws(() => sealLong(bytes))
    sealLong([Buffer.concat(bytes.slice(0, 2)), ...bytes.slice(2)])
    assert.throws(() => sealFrom([frame.subarray(payloadOffset - 2, payloadOffset + 8)]))
    sealFrom([randomBytes(3), randomBytes(7)])
    sealFrom([frame.subarray(payloadOffset, payloadOffset + 4), randomBytes(6)])
    const dst = Buffer.alloc(12)
    assert.throws(() =>
      n.open(frame, IP_OFFSET, TCP_OFFSET, payloadOffset, frame.length, tagOffset, 1, dst, 3),
    )
    assert.throws(() =>
      n.open(frame, IP_OFFSET, TCP_OFFSET, payloadOffset, frame.length, tagOffset, 1, dst, -1),
    )
    // Overlapping the payload, other than exactly in place.
    assert.throws(() =>
      n.open(
        frame,
        IP_OFFSET,
        TCP_OFFSET,
        payloadOffset,
        frame.length,
        tagOffset,
        1,
        frame,
        payloadOffset - 3,
      ),
    )
  })
})
