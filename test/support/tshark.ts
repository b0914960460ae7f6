import { execFileSync } from 'node:child_process'

const PREFS = [
  '-o',
  'tcp.check_checksum:TRUE',
  '-o',
  'ip.check_checksum:TRUE',
  '-o',
  'tcp.analyze_sequence_numbers:TRUE',
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
    ['frame.number', '_ws.expert.message'],
    '_ws.expert.severity >= 0x00600000 || _ws.malformed',
  ).map((r) => `frame ${r[0]}: ${r[1]}`)
}
