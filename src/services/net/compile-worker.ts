/**
 * Worker thread: checks and compiles one request's rules files (compile.ts) off the IOhyp's event
 * loop, and posts back the result (the prefilter automata's buffers transferred, not copied) or the error.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { isVrioError } from '../../errors.ts'
import { type CompileRequest, compileRules, transferables } from './compile.ts'

const port = parentPort
if (port) {
  try {
    const result = compileRules(workerData as CompileRequest)
    port.postMessage({ ok: true, result }, transferables(result.tables))
  } catch (error) {
    port.postMessage({
      ok: false,
      error: isVrioError(error)
        ? error.toJSON()
        : { code: 'invalid-rules', message: `compiling rules failed: ${(error as Error).message}` },
    })
  }
}
