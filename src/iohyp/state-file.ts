/**
 * The IOhyp's state file (`<stateDir>/iohyp-state.json`): enrolled guests and the disks and NICs
 * created at run time, so a restarted IOhyp serves them again. One schema, checked on every load:
 * a corrupted or hand-edited file stops the daemon with an error naming the field, and never
 * loses what was there — the file is left as it is, and the last good copy (`…json.last-good`,
 * the previous valid state, rotated at every save) is named in the error so the operator can move
 * it back.
 */
import { copyFile, rename } from 'node:fs/promises'
import * as z from 'zod'
import { readFileIfExists, writeFileAtomic } from '../daemon/runtime.ts'
import { guestSpecSchema } from '../control/guest-spec.ts'
import { diskStateSchema } from '../devices/blk/spec.ts'
import { checkWithSchema } from '../devices/fields.ts'
import { nicStateSchema } from '../devices/net/spec.ts'
import { VrioError } from '../errors.ts'

export const stateFileSchema = z.strictObject({
  version: z.literal(1),
  /** Enrolled guests, as the control API takes them (the key as hex). */
  guests: z.array(guestSpecSchema).default([]),
  disks: z.array(diskStateSchema).default([]),
  nics: z.array(nicStateSchema).default([]),
})

export type IohypState = z.output<typeof stateFileSchema>

export const EMPTY_STATE: IohypState = { version: 1, guests: [], disks: [], nics: [] }

export function lastGoodPath(file: string): string {
  return `${file}.last-good`
}

/** Parses a state file's text; throws VrioError('invalid-state') naming the file and every bad field. */
export function parseStateFile(text: string, file: string): IohypState {
  const hint = `the state file was corrupted or edited wrongly; it is left as it is. The last good copy is ${lastGoodPath(file)}: move it over ${file} to start from it, or fix the field`
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (error) {
    throw new VrioError('invalid-state', `state file ${file}: not valid JSON (${(error as Error).message})`, {
      path: file,
      field: '',
      hint,
    })
  }
  const r = checkWithSchema(stateFileSchema, raw)
  if (r.ok) return r.data
  const parts = r.issues.map((i) => `${i.path || '(top level)'}: ${i.message}`)
  throw new VrioError('invalid-state', `state file ${file}: ${parts.join('; ')}`, {
    path: file,
    field: r.issues[0]?.path ?? '',
    errors: r.issues,
    hint,
  })
}

/** The state in `file`: EMPTY_STATE when there is none yet. */
export async function readStateFile(file: string): Promise<IohypState> {
  const text = await readFileIfExists(file)
  return text === undefined ? EMPTY_STATE : parseStateFile(text, file)
}

/**
 * Writes `state` atomically. The file it replaces becomes the last good copy when it is valid
 * (a hand-edited, broken file is not rotated over a good copy).
 */
export async function writeStateFile(file: string, state: IohypState): Promise<void> {
  const previous = await readFileIfExists(file)
  let valid = previous !== undefined
  try {
    if (valid) parseStateFile(previous!, file)
  } catch {
    valid = false
  }
  if (valid) {
    // Copy then rename: the last good copy is never a half-written file.
    await copyFile(file, `${lastGoodPath(file)}.tmp`)
    await rename(`${lastGoodPath(file)}.tmp`, lastGoodPath(file))
  }
  await writeFileAtomic(file, `${JSON.stringify(state, null, 2)}\n`)
}
