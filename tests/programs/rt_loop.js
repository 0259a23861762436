// node: a CPU loop with JIT-compiled code and a growing heap (V8 keeps its heap and code
// MADV_DONTFORK). rt_loop.js DIR STEPS HOLD: reads DIR/seed at start, prints one line per
// step, waits for DIR/go at step HOLD, ends with a digest of everything it kept.
'use strict';
const fs = require('fs');
const crypto = require('crypto');
const [dir, steps, hold] = [process.argv[2], +process.argv[3], +process.argv[4]];
let s = parseInt(fs.readFileSync(dir + '/seed', 'utf8'), 10);
const kept = new Map();
const out = (line) => fs.writeSync(1, line + '\n');
const waitGo = () => {
  const end = Date.now() + 600000;
  while (!fs.existsSync(dir + '/go')) {
    if (Date.now() > end) throw new Error('go never appeared');
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
  }
};
for (let step = 1; step <= steps; step++) {
  if (step === hold) waitGo();
  for (let i = 0; i < 200000; i++) s = (s * 31 + i) % 1000003;
  const obj = { step, s, tag: 'x'.repeat(step % 50), list: Array.from({ length: 64 }, (_, k) => s ^ k) };
  kept.set(step, obj);
  const h = crypto.createHash('sha256').update(JSON.stringify(obj)).digest('hex');
  out(`step ${step} ${s} ${h.slice(0, 16)} ${kept.size}`);
}
const all = crypto.createHash('sha256').update(JSON.stringify([...kept.values()])).digest('hex');
out(`done ${steps} ${all}`);
