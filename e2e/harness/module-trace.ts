// Preloaded with `node --import` into a process under test: appends the URL of every module the process
// loads (ES modules, CommonJS files, node: builtins) to the file named by CHAPERONE_MODULE_TRACE, one per
// line, as it loads. Tests read it to see what a process has loaded at a given moment.
import { appendFileSync } from 'node:fs';
import { registerHooks } from 'node:module';

const out = process.env.CHAPERONE_MODULE_TRACE;
if (out !== undefined) {
  registerHooks({
    load(url, context, nextLoad) {
      appendFileSync(out, `${url}\n`);
      return nextLoad(url, context);
    },
  });
}
