/**
 * A disk's spec: the one schema for what a remote disk is made of, used by the config file
 * (`disks:`), the control API (`POST /v1/blk`) and the state file. As for NICs (devices/net/spec.ts)
 * the uses differ only where their inputs do: the config names each disk and may give key files
 * relative to itself; the API may leave the name to the IOhyp and takes absolute key files (the CLI
 * resolves them); the state file holds the disk as created, with its handle.
 */
import * as z from 'zod'
import {
  absolutePathSchema,
  deviceNameSchema,
  handleSchema,
  macSchema,
  pathSchema,
  specError,
  textSchema,
  checkWithSchema,
} from '../fields.ts'

function encryptShape<P extends z.ZodType>(file: P) {
  return z.discriminatedUnion('kind', [
    z.strictObject({
      kind: z.literal('plain'),
      cipher: z.literal('aes-xts-plain64'),
      keyFile: file,
      sectorSize: z.literal([512, 4096]).optional(),
    }),
    z
      .strictObject({
        kind: z.literal('luks'),
        passphraseFile: file.optional(),
        keyFile: file.optional(),
      })
      .check(
        z.refine((v) => (v.passphraseFile === undefined) !== (v.keyFile === undefined), {
          error: 'luks needs exactly one of passphraseFile and keyFile',
        }),
      ),
  ])
}

/**
 * Block encryption of a disk on the IOhyp. `plain`: dm-crypt plain mode with a raw key file;
 * `luks`: a LUKS volume opened with either a passphrase file or a key file (exactly one).
 */
const encryptSchema = encryptShape(pathSchema)
const absoluteEncryptSchema = encryptShape(absolutePathSchema)

function diskShape<N extends z.ZodType, E extends z.ZodType>(name: N, encrypt: E) {
  return {
    /** Unique on the IOhyp; the NBD export's name in the guest. */
    name,
    /** The guest's MAC, IPv4 address or (config) name. */
    guest: textSchema,
    /** A raw image file or a block device on the IOhyp. */
    backing: pathSchema,
    readOnly: z.boolean().optional(),
    encrypt: encrypt.optional(),
  }
}

/** A disk in a config file: named, key files relative to the file allowed. */
export const diskEntrySchema = z.strictObject(diskShape(deviceNameSchema, encryptSchema))
/** A disk as the control API takes it: the name optional, key files absolute. */
export const diskRequestSchema = z.strictObject(diskShape(deviceNameSchema.optional(), absoluteEncryptSchema))
/** A disk in the IOhyp's state file: as created, with its handle. */
export const diskStateSchema = z.strictObject({
  ...diskShape(deviceNameSchema, absoluteEncryptSchema),
  guest: macSchema,
  readOnly: z.boolean(),
  handle: handleSchema,
})

export type DiskRequest = z.output<typeof diskRequestSchema>
/** A disk as the IOhyp serves it (a request, a config entry or a state file entry, parsed). */
export type DiskSpec = DiskRequest & { name: string; readOnly: boolean }

/**
 * Checks a disk request (a `POST /v1/blk` body, or a config disk as the IOhyp applies it); throws
 * VrioError('invalid-argument') whose `field` is the first bad field and whose message names all.
 */
export function parseDiskRequest(body: unknown): DiskRequest & { readOnly: boolean } {
  const r = checkWithSchema(diskRequestSchema, body ?? {})
  if (!r.ok) throw specError(r.issues)
  return { ...r.data, readOnly: r.data.readOnly === true }
}
