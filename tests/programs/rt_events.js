// node: an event-loop program: timers, immediates, promises and a worker-free async chain,
// with state in closures and a Map. rt_events.js DIR STEPS HOLD: reads DIR/seed at start, one
// line per step (each step runs from a timer), polls for DIR/go with a timer at step HOLD,
// ends with a digest. The output does not depend on timing.
'use strict';
const fs = require('fs');
const crypto = require('crypto');
const [dir, steps, hold] = [process.argv[2], +process.argv[3], +process.argv[4]];
const seed = parseInt(fs.readFileSync(dir + '/seed', 'utf8'), 10);
const out = (line) => fs.writeSync(1, line + '\n');
const log = new Map();
let h = crypto.createHash('sha256').update(String(seed)).digest();
let ticks = 0;
const ticker = setInterval(() => { ticks++; }, 1); // keeps a repeating timer armed
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const immediate = () => new Promise((r) => setImmediate(r));

async function step(n) {
  await sleep(2);
  await immediate();
  for (let i = 0; i < 300; i++) h = crypto.createHash('sha256').update(h).digest();
  const v = await Promise.resolve(h.readUInt32LE(0) % 1000003);
  log.set(n, v);
  let sum = 0;
  for (const x of log.values()) sum = (sum + x) % 1000003;
  out(`step ${n} ${v} ${sum}`);
}

async function waitGo() {
  const end = Date.now() + 600000;
  while (!fs.existsSync(dir + '/go')) {
    if (Date.now() > end) throw new Error('go never appeared');
    await sleep(5);
  }
}

(async () => {
  for (let n = 1; n <= steps; n++) {
    if (n === hold) await waitGo();
    await step(n);
  }
  clearInterval(ticker);
  out(`done ${steps} ${crypto.createHash('sha256').update(JSON.stringify([...log])).digest('hex')} ${ticks > 0}`);
})();
