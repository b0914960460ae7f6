import { execFileSync } from 'node:child_process'

const PREFS = [
  '-o',
  'tcp.check_checksum:TRUE',
  '-o',
  'ip.check_checksum:TRUE',
  '-o',
  'tcp.analyze_sequence_numbers:TRUE',
  // vrio's payload is no application protocol tshark knows (sealed, it is ciphertext): a dissector
  // picked by a random ephemeral port would judge noise. TCP and below are what is judged here.
  '-d',
  'tcp.port==1-65535,data',
]

/** Runs tshark on a capture file and returns one array of field values per frame. */
export function tsharkFields(file: string, fields: string[], filter?: string): string[][] {
  const args = [
    '-r',
    file,
    ...PREFS,
    '-T',
    'fields',
    '-E',
    'separator=\t',
    '-E',
    'occurrence=a',
    '-E',
    'aggregator=|',
  ]
  for (const f of fields) args.push('-e', f)
  if (filter) args.push('-Y', filter)
  const out = execFileSync('tshark', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  return out
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => l.split('\t'))
}

/** Expert-info entries of warning severity or worse, and malformed frames, as readable lines. */
export function tsharkProblems(file: string): string[] {
  return tsharkFields(
    file,
    ['frame.number', '_ws.expert.message', 'frame.protocols'],
    '_ws.expert.severity >= 0x00600000 || _ws.malformed',
  ).map((r) => `frame ${r[0]}: ${r[1]} (${r[2]})`)
}

/**
 * Like tsharkProblems, but only for TCP streams whose opening SYN is in the capture: a capture that
 * starts a moment late sees the middle of a stream and reports segments it "missed".
 * Returns the problems and how many streams were judged.
 */
export function tsharkProblemsOfWholeStreams(file: string): { problems: string[]; streams: number } {
  const whole = new Set(
    tsharkFields(file, ['tcp.stream'], 'tcp.flags.syn == 1 && tcp.flags.ack == 0').map((r) => r[0]),
  )
  const resent = resentFrames(file)
  const problems = tsharkFields(
    file,
    ['frame.number', 'tcp.stream', '_ws.expert.message', 'frame.protocols'],
    '_ws.expert.severity >= 0x00600000 || _ws.malformed',
  )
    .filter((r) => r[1] === '' || whole.has(r[1]))
    .filter((r) => !(OUT_OF_ORDER.test(r[2]) && resent.has(r[0])))
    .map((r) => `frame ${r[0]}: ${r[2]} (${r[3]})`)
  return { problems, streams: whole.size }
}

const OUT_OF_ORDER = /^This frame is a \(suspected\) out-of-order segment$/

/**
 * Frames whose payload was all sent before in the same direction of the same stream: resent data.
 * tshark calls a retransmission "out-of-order" when it follows the original sooner than tshark's
 * RTT estimate (on a loaded machine a receiver's socket buffer overflows and the sender resends
 * quickly); data sent for the first time behind later data is not in this set, so real reordering
 * by a sender is still reported.
 */
function resentFrames(file: string): Set<string> {
  const rows = tsharkFields(
    file,
    ['frame.number', 'tcp.stream', 'tcp.srcport', 'tcp.seq', 'tcp.len'],
    'tcp.len > 0',
  )
  const sent = new Map<string, Array<[number, number]>>()
  const resent = new Set<string>()
  for (const [frame, stream, port, seqText, lenText] of rows) {
    const key = `${stream}/${port}`
    const seq = Number(seqText)
    const end = seq + Number(lenText)
    const ranges = sent.get(key) ?? []
    if (covered(ranges, seq, end)) resent.add(frame)
    else add(ranges, seq, end)
    sent.set(key, ranges)
  }
  return resent
}

/** Whether [start, end) lies inside one of `ranges` (sorted, disjoint, merged). */
function covered(ranges: Array<[number, number]>, start: number, end: number): boolean {
  for (let i = ranges.length - 1; i >= 0; i--) if (ranges[i][0] <= start) return end <= ranges[i][1]
  return false
}

/** Adds [start, end) to `ranges`, keeping them sorted and merged (new data is mostly at the end). */
function add(ranges: Array<[number, number]>, start: number, end: number): void {
  let i = ranges.length
  while (i > 0 && ranges[i - 1][0] > start) i--
  ranges.splice(i, 0, [start, end])
  let k = Math.max(0, i - 1)
  while (k + 1 < ranges.length) {
    if (ranges[k + 1][0] <= ranges[k][1]) {
      ranges[k][1] = Math.max(ranges[k][1], ranges[k + 1][1])
      ranges.splice(k + 1, 1)
    } else if (k >= i) break
    else k++
  }
}
