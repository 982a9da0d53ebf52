// The dashboard of a log-only pixeld (`[agg] enabled = false`) in a real browser: Debian's
// Chromium, driven by playwright-core, against a pixeld that tests/query/dashboard_browser.rs
// started. Run by that test; by hand:
//   PIXELD_URL=http://127.0.0.1:5580 PIXELD_OUT=/tmp node tests/browser/dashboard_off.mjs
//
// Asserts: the page shows one notice naming the key (the server's own error) instead of empty
// panels, its status says "log only" and never "error"; the health strip is live — it counts
// the hits this script posts within 15 s; a range with JSON queries behind it (6 h) shows the
// same notice, not an error. Screenshot to PIXELD_OUT. Exits non-zero on the first failed
// check, naming it.
import { checked, launch, ok } from './harness.mjs';
import assert from 'node:assert/strict';
import { join } from 'node:path';

const BASE = process.env.PIXELD_URL;
const OUT = process.env.PIXELD_OUT || '.';
if (!BASE) { console.error('PIXELD_URL is not set'); process.exit(2); }

// 200 hits a second for `seconds`, stamped now, so that the health strip has a rate to show.
async function feed(seconds) {
  for (let s = 0; s < seconds; s++) {
    const now = Date.now();
    const body = Array.from({ length: 200 }, (_, i) => JSON.stringify({
      msec: ((now + i) / 1000).toFixed(3), url: `https://off.example/p${i % 7}`, vid: `v${i}`,
      ua: 'Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0',
    })).join('\n') + '\n';
    const r = await fetch(BASE + '/v1/events', { method: 'POST', body });
    assert.equal(r.status, 200, `POST /v1/events: ${r.status}`);
    await new Promise((res) => setTimeout(res, 1000));
  }
}

const browser = await launch();
await checked(browser, async () => {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, locale: 'en-US' });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  // The browser logs each 503 it was answered; the page itself must log nothing.
  page.on('console', (m) => { if (m.type() === 'error' && !/status of 503/.test(m.text())) errors.push(m.text()); });

  await page.goto(BASE + '/');
  await page.waitForSelector('body[data-aggregation=off]', { timeout: 15000 });
  const shown = () => page.evaluate(() => ({
    notice: !document.getElementById('agg-off').hidden,
    text: document.getElementById('agg-off-text').textContent,
    tiles: document.querySelector('.tiles').getBoundingClientRect().height,
    chart: document.querySelector('.chart-card').getBoundingClientRect().height,
    health: document.querySelector('.health').getBoundingClientRect().height,
    status: document.getElementById('status').textContent,
  }));
  let s = await shown();
  assert.ok(s.notice, 'the aggregation-off notice is hidden');
  assert.match(s.text, /agg\.enabled = true/, `the notice does not name the key: ${s.text}`);
  ok('the notice names the key: ' + s.text.slice(0, 60) + '…');
  assert.deepEqual([s.tiles, s.chart], [0, 0], 'the panels of the aggregates are still shown');
  assert.ok(s.health > 0, 'the health strip is hidden');
  ok('the panels are hidden, the health strip is shown');
  assert.match(s.status, /log only/, `status: ${s.status}`);
  ok('status: ' + s.status);

  await page.waitForFunction(() => document.getElementById('h-shards').textContent !== '–', null, { timeout: 15000 });
  const fed = feed(12);
  await page.waitForFunction(() => /^[1-9][\d,.]* \/s$/.test(document.getElementById('h-in').textContent), null, { timeout: 20000 });
  ok('health is live: events in ' + await page.locator('#h-in').textContent());
  await fed;

  await page.locator('label[for=r-6h]').click();
  await page.waitForTimeout(1500);
  s = await shown();
  assert.ok(s.notice && s.tiles === 0, 'the 6 h range left the notice');
  assert.doesNotMatch(s.status, /error/, `status after 6 h: ${s.status}`);
  ok('6 h range: the same notice, status ' + s.status);

  await page.screenshot({ path: join(OUT, 'dashboard-log-only.png'), fullPage: true });
  ok('screenshot ' + join(OUT, 'dashboard-log-only.png'));
  assert.deepEqual(errors, [], 'errors in the page');
  ok('no script errors');
});
