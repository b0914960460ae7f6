/**
 * Docs as tests: every config example in docs/ and the README passes the checks of `vrio config
 * check` (in a sandbox holding the files it names), and every `vrio` command line in their code
 * blocks names commands and options that exist.
 */
import assert from 'node:assert/strict'
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, isAbsolute, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { Command } from 'commander'
import YAML from 'yaml'
import { writeKeyFile } from '../../src/auth/key-file.ts'
import { buildProgram } from '../../src/cli/program.ts'
import { checkGuestConfig, checkIohypConfig } from '../../src/config/load.ts'
import { type TempDir, tempDir } from '../control/fixtures.ts'

const ROOT = new URL('../../../', import.meta.url)
const DOCS = [
  'README.md',
  ...readdirSync(new URL('docs/', ROOT))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
]

interface Block {
  file: string
  line: number
  lang: string
  text: string
}

function codeBlocks(): Block[] {
  const out: Block[] = []
  for (const file of DOCS) {
    const lines = readFileSync(new URL(file, ROOT), 'utf8').split('\n')
    for (let i = 0; i < lines.length; i++) {
      const open = /^```(\w*)\s*$/.exec(lines[i])
      if (!open) continue
      const start = i + 1
      while (++i < lines.length && !/^```\s*$/.test(lines[i]));
      out.push({ file, line: start, lang: open[1], text: lines.slice(start, i).join('\n') })
    }
  }
  return out
}

/** Files a config names, by key: made in the sandbox so the checks of the files themselves pass. */
const SECRET_KEYS = new Set(['keyFile', 'passphraseFile'])
const FILE_KEYS = new Set(['backing', 'firewall', 'dpi', ...SECRET_KEYS])

/** The config with every file it names moved into `dir` (created there), as the operator's host would hold them. */
function sandboxed(value: unknown, dir: string, key = ''): unknown {
  if (Array.isArray(value)) return value.map((v) => sandboxed(v, dir))
  if (typeof value === 'object' && value !== null)
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, sandboxed(v, dir, k)]))
  if (typeof value !== 'string' || !FILE_KEYS.has(key)) return value
  const path = join(dir, 'host', isAbsolute(value) ? value : join('etc', value))
  mkdirSync(dirname(path), { recursive: true })
  if (key === 'keyFile') writeKeyFile(path, Buffer.alloc(32, 7))
  else if (key === 'passphraseFile') writeFileSync(path, 'correct horse\n', { mode: 0o600 })
  else writeFileSync(path, key === 'backing' ? Buffer.alloc(4096) : '')
  return path
}

/** The command a line names, and the rest of its words. */
function resolve(program: Command, words: string[]): { command: Command; rest: string[] } {
  let command = program
  let i = 0
  for (; i < words.length; i++) {
    const sub = command.commands.find((c) => c.name() === words[i] || c.aliases().includes(words[i]))
    if (!sub) break
    command = sub
  }
  return { command, rest: words.slice(i) }
}

/** A doc's command line as words: comments, `...` and `[ ]` around optional parts dropped. */
function words(line: string): string[] {
  const text = line.replace(/\s+#.*$/, '').replace(/^\$\s*/, '')
  const out: string[] = []
  for (const m of text.matchAll(/"[^"]*"|'[^']*'|\S+/g)) {
    let w = m[0]
    if (w === '...' || w === '\\') continue
    w = w.replace(/^\[+/, '').replace(/\]+$/, '')
    if (w.includes('|') && w.startsWith('--')) w = w.split('|')[0]
    out.push(w.replace(/^["']|["']$/g, ''))
  }
  return out
}

describe('docs as tests', () => {
  let tmp: TempDir
  const blocks = codeBlocks()

  before(() => {
    tmp = tempDir('vrio-docs-')
  })
  after(() => tmp.remove())

  it('every config example passes vrio config check', () => {
    // vrio's configs; another tool's YAML (a Prometheus scrape config) says so in its first keys.
    const OTHER_TOOLS = ['scrape_configs', 'global', 'rule_files']
    const configs = blocks.filter(
      (b) =>
        (b.lang === 'yaml' || b.lang === 'yml') &&
        !OTHER_TOOLS.some((k) => Object.hasOwn(YAML.parse(b.text) ?? {}, k)),
    )
    assert.ok(configs.length >= 2, 'the docs show an IOhyp and a guest config')
    configs.forEach((b, n) => {
      const doc = YAML.parse(b.text) as Record<string, unknown>
      const dir = tmp.path(`c${n}`)
      const file = join(dir, 'host', 'etc', 'config.yaml')
      mkdirSync(dirname(file), { recursive: true })
      const config = sandboxed(doc, dir) as Record<string, unknown>
      const iohyp = 'guests' in config || 'disks' in config || 'nics' in config || 'stateDir' in config
      try {
        if (iohyp) checkIohypConfig(config, file)
        else checkGuestConfig(config, file)
      } catch (error) {
        assert.fail(`${b.file}:${b.line}: ${(error as Error).message}`)
      }
    })
  })

  it('every vrio command line in the docs names commands and options that exist', () => {
    const program = buildProgram()
    let checked = 0
    for (const b of blocks) {
      b.text.split('\n').forEach((line, k) => {
        if (!/^\s*(\$\s*)?vrio\s/.test(line)) return
        const where = `${b.file}:${b.line + k}: ${line.trim()}`
        const { command, rest } = resolve(program, words(line).slice(1))
        assert.notEqual(command, program, `${where}: no such command`)
        assert.equal(command.commands.length, 0, `${where}: ${command.name()} needs a subcommand`)
        const { unknown } = command.parseOptions(rest)
        const unknownOptions = unknown.filter((w) => w.startsWith('-'))
        assert.deepEqual(unknownOptions, [], `${where}: unknown options`)
        checked++
      })
    }
    assert.ok(checked >= 20, `checked ${checked} command lines`)
  })
})
