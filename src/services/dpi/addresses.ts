/**
 * The address and port fields of a Suricata/Snort rule header: `any`, `$VARIABLE`, negation `!`,
 * nested lists `[a,b,![c,d]]`, IPv4/IPv6 addresses with CIDR prefixes, ports and port ranges
 * (`80`, `1024:`, `:1023`, `1000:2000`). Each field compiles to a predicate over the frame's bytes
 * (addresses) or a number (ports), so matching allocates nothing.
 *
 * List semantics are Suricata's: a list matches when one of its positive items matches (or it has
 * none) and none of its negated items does, so `[10.0.0.0/8,!10.1.2.3]` is "10/8 except 10.1.2.3".
 */

/** Tests the address of `length` bytes (4 or 16) at `offset` in `frame`. */
export type AddressPredicate = (frame: Uint8Array, offset: number, length: number) => boolean
export type PortPredicate = (port: number) => boolean

export interface AddressMatcher {
  readonly text: string
  /** True for a field that is (or reduces to) `any`: the engine skips it. */
  readonly any: boolean
  readonly match: AddressPredicate
  /**
   * When the field is a plain list of blocks (no negation): its IPv4 ones, as 32-bit networks, so
   * the engine can index rules by address (IP reputation lists of hundreds of addresses); an IPv4
   * address the field matches is in one of them.
   */
  readonly ipv4Blocks?: readonly { network: number; prefix: number }[]
  /** Such a list also holds IPv6 blocks. */
  readonly hasIpv6?: boolean
  /** The field is only IPv6 blocks (no negation): it never matches an IPv4 address. */
  readonly ipv6Only?: boolean
}

export interface PortMatcher {
  readonly text: string
  readonly any: boolean
  readonly match: PortPredicate
}

/** Thrown by the field parsers; the rule parser turns it into a located error. */
export class FieldError extends Error {}

type Node<T> =
  | { kind: 'any' }
  | { kind: 'atom'; test: T }
  | { kind: 'not'; inner: Node<T> }
  | { kind: 'group'; items: Node<T>[] }

const MAX_VARIABLE_DEPTH = 16

/** Splits a field into tokens: '[', ']', ',', '!', and atoms (whitespace is insignificant). */
function tokenize(text: string): string[] {
  const tokens: string[] = []
  let atom = ''
  const flush = (): void => {
    if (atom !== '') tokens.push(atom)
    atom = ''
  }
  for (const c of text) {
    if (c === '[' || c === ']' || c === ',' || c === '!') {
      flush()
      tokens.push(c)
    } else if (c === ' ' || c === '\t') {
      flush()
    } else {
      atom += c
    }
  }
  flush()
  return tokens
}

function parseField<T>(
  text: string,
  what: 'address' | 'port',
  vars: Readonly<Record<string, string>>,
  atom: (token: string) => T,
  depth = 0,
): Node<T> {
  if (depth > MAX_VARIABLE_DEPTH) throw new FieldError(`${what} variables nest too deep (a cycle?)`)
  const tokens = tokenize(text)
  let at = 0
  const parseItem = (): Node<T> => {
    const token = tokens[at++]
    if (token === undefined) throw new FieldError(`unexpected end of ${what} '${text}'`)
    if (token === '!') {
      const inner = parseItem()
      if (inner.kind === 'any') throw new FieldError(`'!any' matches nothing in ${what} '${text}'`)
      return { kind: 'not', inner }
    }
    if (token === '[') {
      const items: Node<T>[] = []
      for (;;) {
        if (tokens[at] === ']') break
        items.push(parseItem())
        if (tokens[at] === ',') at++
        else if (tokens[at] !== ']') throw new FieldError(`expected ',' or ']' in ${what} '${text}'`)
      }
      at++
      if (items.length === 0) throw new FieldError(`empty list in ${what} '${text}'`)
      return { kind: 'group', items }
    }
    if (token === ']' || token === ',') throw new FieldError(`unexpected '${token}' in ${what} '${text}'`)
    if (token.toLowerCase() === 'any') return { kind: 'any' }
    if (token.startsWith('$')) {
      const name = token.slice(1)
      const value = vars[name]
      if (value === undefined) throw new FieldError(`undefined variable '$${name}'`)
      return parseField(value, what, vars, atom, depth + 1)
    }
    return { kind: 'atom', test: atom(token) }
  }
  const node = parseItem()
  if (at !== tokens.length) throw new FieldError(`trailing '${tokens[at]}' in ${what} '${text}'`)
  return node
}

function isAny<T>(node: Node<T>): boolean {
  if (node.kind === 'any') return true
  if (node.kind !== 'group') return false
  // A group with a positive `any` and no negations is `any`.
  return node.items.some((i) => i.kind === 'any') && !node.items.some((i) => i.kind === 'not')
}

/** A compiled predicate as called: at most three arguments (address predicates take three). */
type Fixed = (a: never, b: never, c: never) => boolean

/** Lists of at least this many atoms are matched through `batch` (one lookup, not a scan). */
const BATCH_MIN = 4

function compile<T, F extends (...args: never[]) => boolean>(
  node: Node<T>,
  atom: (test: T) => F,
  batch?: (tests: T[]) => F,
): F {
  /** The predicates for `items`, the plain atoms among them folded into one batch predicate. */
  const all = (items: Node<T>[]): F[] => {
    const atoms = items.filter((i): i is { kind: 'atom'; test: T } => i.kind === 'atom')
    if (!batch || atoms.length < BATCH_MIN) return items.map((i) => compile(i, atom, batch))
    const rest = items.filter((i) => i.kind !== 'atom').map((i) => compile(i, atom, batch))
    return [batch(atoms.map((a) => a.test)), ...rest]
  }
  switch (node.kind) {
    case 'any':
      return (() => true) as unknown as F
    case 'atom':
      return atom(node.test)
    case 'not': {
      const inner = compile(node.inner, atom, batch) as unknown as Fixed
      return ((a: never, b: never, c: never) => !inner(a, b, c)) as unknown as F
    }
    case 'group': {
      // Fixed parameters (a predicate takes at most three), not rest arguments: a call allocates nothing.
      const positives = all(node.items.filter((i) => i.kind !== 'not')) as unknown as Fixed[]
      const negatives = all(
        node.items.filter((i): i is { kind: 'not'; inner: Node<T> } => i.kind === 'not').map((i) => i.inner),
      ) as unknown as Fixed[]
      if (negatives.length === 0 && positives.length === 1) return positives[0] as unknown as F
      return ((a: never, b: never, c: never) => {
        if (positives.length > 0) {
          let any = false
          for (let k = 0; k < positives.length && !any; k++) any = positives[k](a, b, c)
          if (!any) return false
        }
        for (let k = 0; k < negatives.length; k++) if (negatives[k](a, b, c)) return false
        return true
      }) as unknown as F
    }
  }
}

/** A CIDR block: `bytes` is the network (4 or 16 bytes), `prefix` its length in bits. */
interface Cidr {
  bytes: Uint8Array
  prefix: number
}

const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/

/** Dotted-quad IPv4 as 4 bytes, or undefined. */
function parseIPv4Bytes(text: string): Uint8Array | undefined {
  const m = IPV4_RE.exec(text)
  if (!m) return undefined
  const out = new Uint8Array(4)
  for (let i = 0; i < 4; i++) {
    const v = Number(m[i + 1])
    if (v > 255) return undefined
    out[i] = v
  }
  return out
}

/** IPv6 text (RFC 4291 forms: '::' compression, trailing dotted IPv4) as 16 bytes, or undefined. */
export function parseIPv6Bytes(text: string): Uint8Array | undefined {
  const halves = text.split('::')
  if (halves.length > 2) return undefined
  const groups = (s: string): number[] | undefined => {
    if (s === '') return []
    const out: number[] = []
    const parts = s.split(':')
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]
      if (i === parts.length - 1 && part.includes('.')) {
        const v4 = parseIPv4Bytes(part)
        if (!v4) return undefined
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3])
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(part)) return undefined
        out.push(Number.parseInt(part, 16))
      }
    }
    return out
  }
  const head = groups(halves[0])
  const tail = halves.length === 2 ? groups(halves[1]) : []
  if (!head || !tail) return undefined
  const missing = 8 - head.length - tail.length
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined
  const all = [...head, ...new Array<number>(missing).fill(0), ...tail]
  const out = new Uint8Array(16)
  for (let i = 0; i < 8; i++) {
    out[2 * i] = all[i] >> 8
    out[2 * i + 1] = all[i] & 0xff
  }
  return out
}

function parseCidr(token: string): Cidr {
  const slash = token.indexOf('/')
  const addressText = slash < 0 ? token : token.slice(0, slash)
  const bytes = addressText.includes(':') ? parseIPv6Bytes(addressText) : parseIPv4Bytes(addressText)
  if (!bytes) throw new FieldError(`invalid address '${token}'`)
  const bits = bytes.length * 8
  let prefix = bits
  if (slash >= 0) {
    const p = token.slice(slash + 1)
    if (!/^\d{1,3}$/.test(p) || Number(p) > bits) throw new FieldError(`invalid prefix in '${token}'`)
    prefix = Number(p)
  }
  // Normalise the network (clear host bits) so matching can compare masked bytes.
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.max(0, Math.min(8, prefix - i * 8))
    bytes[i] &= (0xff << (8 - keep)) & 0xff
  }
  return { bytes, prefix }
}

function cidrPredicate(c: Cidr): AddressPredicate {
  const { bytes, prefix } = c
  const length = bytes.length
  const whole = prefix >> 3
  const rest = prefix & 7
  const lastMask = (0xff << (8 - rest)) & 0xff
  return (frame, offset, addressLength) => {
    if (addressLength !== length) return false
    for (let i = 0; i < whole; i++) if (frame[offset + i] !== bytes[i]) return false
    return rest === 0 || (frame[offset + whole] & lastMask) === bytes[whole]
  }
}

/** Rules indexed by IPv4 blocks: per prefix length, network → rule indexes. */
export class AddressIndex {
  readonly #tables: { mask: number; rules: Map<number, number[]> }[] = []
  size = 0

  add(rule: number, blocks: readonly { network: number; prefix: number }[]): void {
    for (const { network, prefix } of blocks) {
      const mask = prefix === 0 ? 0 : (~0 << (32 - prefix)) >>> 0
      let t = this.#tables.find((x) => x.mask === mask)
      if (!t) {
        t = { mask, rules: new Map() }
        this.#tables.push(t)
      }
      const list = t.rules.get(network)
      if (list) {
        if (list[list.length - 1] !== rule) list.push(rule)
      } else t.rules.set(network, [rule])
    }
    this.size++
  }

  /** Calls `hit` with each rule one of whose blocks holds the IPv4 address at frame[offset]. */
  lookup(frame: Uint8Array, offset: number, hit: (rule: number) => void): void {
    const a =
      ((frame[offset] << 24) | (frame[offset + 1] << 16) | (frame[offset + 2] << 8) | frame[offset + 3]) >>> 0
    for (const t of this.#tables) {
      const list = t.rules.get((a & t.mask) >>> 0)
      if (list) for (const i of list) hit(i)
    }
  }
}

/**
 * Many CIDR blocks as one predicate (IP reputation rules list hundreds): per address length and
 * prefix length, a set of the masked networks; a lookup per distinct prefix length.
 */
function cidrSetPredicate(blocks: Cidr[]): AddressPredicate {
  // IPv4: per prefix length, the networks as 32-bit numbers; IPv6: as latin1 strings.
  const v4 = new Map<number, Set<number>>()
  const v6 = new Map<number, Set<string>>()
  for (const { bytes, prefix } of blocks) {
    if (bytes.length === 4) {
      let set = v4.get(prefix)
      if (!set) {
        set = new Set()
        v4.set(prefix, set)
      }
      set.add(((bytes[0] << 24) | (bytes[1] << 16) | (bytes[2] << 8) | bytes[3]) >>> 0)
    } else {
      let set = v6.get(prefix)
      if (!set) {
        set = new Set()
        v6.set(prefix, set)
      }
      set.add(Buffer.from(bytes).toString('latin1'))
    }
  }
  const v4Tables = [...v4].map(([prefix, set]) => ({
    mask: prefix === 0 ? 0 : (~0 << (32 - prefix)) >>> 0,
    set,
  }))
  return (frame, offset, addressLength) => {
    if (addressLength === 4) {
      const a =
        ((frame[offset] << 24) | (frame[offset + 1] << 16) | (frame[offset + 2] << 8) | frame[offset + 3]) >>>
        0
      for (const t of v4Tables) if (t.set.has((a & t.mask) >>> 0)) return true
      return false
    }
    for (const [prefix, set] of v6) {
      let key = ''
      for (let i = 0; i < addressLength; i++) {
        const keep = Math.max(0, Math.min(8, prefix - i * 8))
        key += String.fromCharCode(frame[offset + i] & ((0xff << (8 - keep)) & 0xff))
      }
      if (set.has(key)) return true
    }
    return false
  }
}

/** Parses an address field (with `vars` for `$NAME`). Throws FieldError. */
export function parseAddressField(text: string, vars: Readonly<Record<string, string>>): AddressMatcher {
  const node = parseField(text, 'address', vars, parseCidr)
  if (isAny(node)) return { text, any: true, match: () => true }
  const items = node.kind === 'atom' ? [node] : node.kind === 'group' ? node.items : []
  // A plain list of blocks (no negation, no nesting): its IPv4 blocks are all an IPv4 address can
  // match (the engine indexes rules by them), its IPv6 ones all an IPv6 address can.
  const atoms = items.every((a) => a.kind === 'atom') ? (items as { test: Cidr }[]) : []
  const v4 = atoms.filter((a) => a.test.bytes.length === 4)
  const blocks = v4.map(({ test: { bytes: b, prefix } }) => ({
    network: ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0,
    prefix,
  }))
  const hasIpv6 = atoms.length > v4.length
  return {
    text,
    any: false,
    match: compile(node, cidrPredicate, cidrSetPredicate),
    ...(blocks.length > 0 && { ipv4Blocks: blocks }),
    ...(hasIpv6 && (blocks.length > 0 ? { hasIpv6 } : { ipv6Only: true })),
  }
}

interface PortRange {
  low: number
  high: number
}

function parsePortRange(token: string): PortRange {
  const m = /^(\d{0,5})(:?)(\d{0,5})$/.exec(token)
  if (!m || (m[1] === '' && m[3] === '') || (m[2] === '' && m[3] !== '')) {
    throw new FieldError(`invalid port '${token}'`)
  }
  const low = m[1] === '' ? 0 : Number(m[1])
  const high = m[2] === '' ? low : m[3] === '' ? 65535 : Number(m[3])
  if (low > 65535 || high > 65535 || low > high) throw new FieldError(`invalid port range '${token}'`)
  return { low, high }
}

/** Parses a port field (with `vars` for `$NAME`). Throws FieldError. */
export function parsePortField(text: string, vars: Readonly<Record<string, string>>): PortMatcher {
  const node = parseField(text, 'port', vars, parsePortRange)
  if (isAny(node)) return { text, any: true, match: () => true }
  const match = compile<PortRange, PortPredicate>(
    node,
    ({ low, high }) =>
      (p) =>
        p >= low && p <= high,
  )
  return { text, any: false, match }
}
