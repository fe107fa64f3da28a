import * as l15 from 'libpg-query-15';
import * as l18 from 'libpg-query';
await l15.loadModule(); await l18.loadModule();
for (const q of process.argv.slice(2)) {
  for (const [n,l] of [['15',l15],['18',l18]]) {
    try { console.log(n, JSON.stringify(l.parseSync(q))); } catch (e) { console.log(n, 'ERR', e.message, JSON.stringify(e.sqlDetails)); }
  }
}
