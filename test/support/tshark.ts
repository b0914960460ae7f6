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
  const problems = tsharkFields(
    file,
    ['frame.number', 'tcp.stream', '_ws.expert.message', 'frame.protocols'],
    '_ws.expert.severity >= 0x00600000 || _ws.malformed',
  )
    .filter((r) => r[1] === '' || whole.has(r[1]))
    .map((r) => `frame ${r[0]}: ${r[2]} (${r[3]})`)
  return { problems, streams: whole.size }
}
