/** Loading NIC services from their rules files (the I/O around the pure services). */
import { readFile } from 'node:fs/promises'
import { VrioError } from '../../errors.ts'
import { createDpi } from '../dpi/index.ts'
import { createFirewall } from '../firewall/index.ts'
import type { NetServiceKind, ReplaceableNetService } from './chain.ts'

/** The text of a rules file; a missing or unreadable file is a VrioError naming it. */
export async function readRulesFile(kind: NetServiceKind, path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8')
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    throw new VrioError(
      code === 'ENOENT' ? 'not-found' : 'invalid-rules',
      `${kind} rules file ${path}: ${code === 'ENOENT' ? 'does not exist' : (error as Error).message}`,
      { field: kind },
    )
  }
}

/** A new service from a rules file; rule errors are a VrioError 'invalid-rules' naming file:line. */
export async function loadNetService(
  kind: NetServiceKind,
  path: string,
  nicName: string,
): Promise<ReplaceableNetService> {
  return createNetService(kind, await readRulesFile(kind, path), path, nicName)
}

/** A new service from rules text already read from `path`. */
export function createNetService(
  kind: NetServiceKind,
  text: string,
  path: string,
  nicName: string,
): ReplaceableNetService {
  if (kind === 'firewall') return createFirewall(text, path)
  return createDpi(text, path, { interfaceName: nicName })
}
