/**
 * Worker thread: checks and compiles one request's rules files (compile.ts) off the IOhyp's event
 * loop, and posts back the result (the automaton's buffers transferred, not copied) or the error.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { isVrioError } from '../../errors.ts'
import { type CompileRequest, compileRules } from './compile.ts'

const port = parentPort
if (port) {
  try {
    const result = compileRules(workerData as CompileRequest)
    const buffers = new Set<ArrayBuffer>()
    for (const v of Object.values(result.tables ?? {}))
      if (ArrayBuffer.isView(v) && v.buffer instanceof ArrayBuffer) buffers.add(v.buffer)
    port.postMessage({ ok: true, result }, [...buffers])
  } catch (error) {
    port.postMessage({
      ok: false,
      error: isVrioError(error)
        ? error.toJSON()
        : { code: 'invalid-rules', message: `compiling rules failed: ${(error as Error).message}` },
    })
  }
}
