// One policy evaluation through OPA's Wasm ABI 1.2 single call, `opa_eval`, as the SDK's own fast path
// (@open-policy-agent/opa-wasm LoadedPolicy.evaluate) does it, minus three per-call costs on the policy-cache
// miss path: the input JSON is encoded straight into the module's memory (the SDK takes a copy first), the
// result's terminating NUL is found with a native search (the SDK loops over the bytes in JavaScript), and
// the result comes back as its bytes in the module's memory, undecoded (the SDK decodes and parses it), so
// the caller can reuse what it made of the same bytes before. A module older than ABI 1.2, or an SDK whose
// instance does not have the fields this relies on, is evaluated by the SDK as before.
import type { LoadedPolicy } from '@open-policy-agent/opa-wasm';

/** opa_eval(reserved, entrypoint, data, input, input length, heap pointer, format 0 = JSON): result address. */
type OpaEval = (
  reserved: number,
  entrypoint: number,
  data: number,
  input: number,
  inputLength: number,
  heapPointer: number,
  format: number,
) => number;

/** What is used of a WebAssembly.Memory (the project's TypeScript libraries do not declare WebAssembly's types). */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}

function isWasmMemory(m: unknown): m is WasmMemory {
  return (
    typeof m === 'object' &&
    m !== null &&
    (m as { buffer?: unknown }).buffer instanceof ArrayBuffer &&
    typeof (m as { grow?: unknown }).grow === 'function'
  );
}

const encoder = new TextEncoder();
const WASM_PAGE = 64 * 1024;

/** Evaluates one loaded policy: input as JSON text, result set as UTF-8 JSON. */
export interface PolicyEvaluation {
  /** The result set's bytes; a view that is only valid until the next call. */
  evaluate(inputJson: string, entrypoint: number): Uint8Array;
}

export function policyEvaluation(policy: LoadedPolicy): PolicyEvaluation {
  const instance = policy.wasmInstance as { exports?: Record<string, unknown> } | undefined;
  const opaEval = instance?.exports?.opa_eval;
  const memory: unknown = policy.mem;
  const dataAddr: unknown = policy.dataAddr;
  const heapStart: unknown = policy.dataHeapPtr;
  const minor: unknown = policy.minorVersion;
  if (
    typeof opaEval !== 'function' ||
    !isWasmMemory(memory) ||
    typeof dataAddr !== 'number' ||
    typeof heapStart !== 'number' ||
    typeof minor !== 'number' ||
    minor < 2
  ) {
    return {
      evaluate: (inputJson, entrypoint) =>
        encoder.encode(JSON.stringify(policy.evaluate(encoder.encode(inputJson).buffer, entrypoint) as unknown)),
    };
  }
  return new DirectEvaluation(opaEval as OpaEval, memory, dataAddr, heapStart);
}

class DirectEvaluation implements PolicyEvaluation {
  private readonly opaEval: OpaEval;
  private readonly memory: WasmMemory;
  private readonly dataAddr: number;
  /**
   * Where the input goes: the heap as it was after the (empty) data document was loaded, as in the SDK. Both
   * addresses are fixed because the engine never replaces the data document (LoadedPolicy.setData).
   */
  private readonly inputAddr: number;
  /** A view of the memory; made again when the memory grew (growing detaches the old buffer). */
  private view: Uint8Array;

  constructor(opaEval: OpaEval, memory: WasmMemory, dataAddr: number, inputAddr: number) {
    this.opaEval = opaEval;
    this.memory = memory;
    this.dataAddr = dataAddr;
    this.inputAddr = inputAddr;
    this.view = new Uint8Array(memory.buffer);
  }

  private bytes(): Uint8Array {
    if (this.view.buffer !== this.memory.buffer) this.view = new Uint8Array(this.memory.buffer);
    return this.view;
  }

  evaluate(inputJson: string, entrypoint: number): Uint8Array {
    const at = this.inputAddr;
    // UTF-8 needs at most 3 bytes per UTF-16 code unit: room for the worst case before encoding in place.
    const needed = at + inputJson.length * 3 - this.bytes().byteLength;
    if (needed > 0) this.memory.grow(Math.ceil(needed / WASM_PAGE));
    const { read, written } = encoder.encodeInto(inputJson, this.bytes().subarray(at));
    if (read !== inputJson.length) throw new Error('policy input did not fit into the module memory');
    const result = this.opaEval(0, entrypoint, this.dataAddr, at, written, at + written, 0);
    const memory = this.bytes(); // evaluation may have grown the memory
    const end = memory.indexOf(0, result);
    if (result <= 0 || end < 0) throw new Error('policy result is not a NUL-terminated string');
    return memory.subarray(result, end);
  }
}
