// The tracking script (/px.js) in a real browser: Debian's Chromium, driven by playwright-core,
// on pages that nginx serves with the shipped first-party snippet, against a running pixeld
// that tests/query/tracker_browser.rs started. Run by that test; by hand:
//   PIXELD_URL=http://127.0.0.1:5580 SITE_PORT=8081 SITE_ROOT=/var/www/example node tests/browser/tracker.mjs
//
// Each scenario has its own site (a.test, b.test, …: Chromium maps *.test to 127.0.0.1, where
// nginx answers for every name), so pixeld's per-site answers and its log tell them apart.
// Time inside the pages is Playwright's fake clock (page.clock), so "35 s of reading" takes
// a fraction of that; the hits themselves are real requests to pixeld. Exits non-zero on the
// first failed check, naming it.
import { checked, launch, ok } from './harness.mjs';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const PIXELD = process.env.PIXELD_URL;
const PORT = process.env.SITE_PORT;
const ROOT = process.env.SITE_ROOT;
if (!PIXELD || !PORT || !ROOT) { console.error('PIXELD_URL, SITE_PORT and SITE_ROOT must be set'); process.exit(2); }
const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const site = (host) => `http://${host}:${PORT}`;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- pixeld's side: its log (every stored hit, raw) and its answers --------------------------
async function api(path) {
  const r = await fetch(PIXELD + path);
  assert.equal(r.status, 200, `${path}: HTTP ${r.status}`);
  return r;
}
async function hits() {
  const shards = (await (await api('/v1/log/shards')).json()).shards;
  const out = [];
  for (const s of shards) {
    if (!s.next_offset) continue;
    const body = await (await api(`/v1/log?shard=${s.shard}&offset=0&max_records=10000&max_bytes=8388608`)).text();
    for (const l of body.split('\n')) {
      if (!l) continue;
      const h = JSON.parse(JSON.parse(l).line);
      h.url = h.url ? decodeURIComponent(h.url) : h.url;
      h.urlref = h.urlref ? decodeURIComponent(h.urlref) : h.urlref;
      h.host = h.url ? new URL(h.url).hostname : '';
      out.push(h);
    }
  }
  // In the order pixeld received them (each shard's log is in order; shards interleave).
  return out.sort((a, b) => Number(a.msec) - Number(b.msec));
}
// Waits (≤ 30 s: a loaded CI machine is slow, never wrong) until `pred` holds for the hits
// of `host`; returns them. A failure says what pixeld's log holds and how far it is durable.
async function hitsOf(host, pred, what) {
  const deadline = Date.now() + 30000;
  for (;;) {
    const h = (await hits()).filter((x) => x.host === host);
    if (pred(h)) return h;
    if (Date.now() > deadline) {
      const shards = await (await api('/v1/log/shards')).text();
      assert.fail(`${what}: ${host}'s hits are ${JSON.stringify(h, null, 1)}\n/v1/log/shards: ${shards}`);
    }
    await sleep(100);
  }
}
async function summary(host, pred, what) {
  const deadline = Date.now() + 30000;
  for (;;) {
    const s = await (await api(`/v1/summary?from=-30m&site=${host}`)).json();
    if (pred(s)) return s;
    if (Date.now() > deadline) assert.fail(`${what}: /v1/summary for ${host} is ${JSON.stringify(s)}`);
    await sleep(100);
  }
}
const engaged = (h) => h.filter((x) => x.action === 'hb').reduce((a, x) => a + Number(x.inc), 0);

// --- the pages -------------------------------------------------------------------------------
function page(name, attrs, body = '') {
  writeFileSync(join(ROOT, name), `<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>${name}</title>
<script defer src="/px.js" ${attrs}></script></head><body style="height:3000px">
<h1>${name}</h1>${body}<script src="/router.js"></script></body></html>`);
}
// A tiny single-page-app router: links under /app/ change the url without loading a page.
writeFileSync(join(ROOT, 'router.js'), `document.addEventListener('click', function (e) {
  var a = e.target.closest && e.target.closest('a[href^="/app/"]');
  if (a) { e.preventDefault(); history.pushState({}, '', a.getAttribute('href')); }
});`);
page('spa.html', '', '<a id="two" href="/app/two">two</a> <a id="three" href="/app/three?x=1">three</a>');
page('read.html', 'data-heartbeat="5"');
page('hash.html', 'data-hash');
page('close.html', 'data-heartbeat="10"');
page('plain.html', '');
page('local.html', 'data-vid="local"');
page('dnt.html', 'data-respect-dnt');
page('events.html', 'data-outbound data-downloads',
  '<a id="out" href="https://elsewhere.example/story">out</a> <a id="dl" href="/files/report.pdf?v=2">pdf</a> <a id="in" href="/plain.html">in</a>' +
  '<script>window.px=window.px||function(){(px.q=px.q||[]).push(arguments)};px("early",{n:1});' +
  // The page handles these two links itself (no navigation), as apps do.
  'document.addEventListener("click",function(e){if(e.target.closest("#dl,#in"))e.preventDefault()})</script>');
const BROKEN = `http://127.0.0.1:${process.env.BROKEN_PORT}/p.gif`;
// One second of 8 kHz 8-bit mono silence, looped by the media page.
{
  const n = 8000, wav = Buffer.alloc(44 + n, 128);
  wav.write('RIFF', 0); wav.writeUInt32LE(36 + n, 4); wav.write('WAVEfmt ', 8);
  wav.writeUInt32LE(16, 16); wav.writeUInt16LE(1, 20); wav.writeUInt16LE(1, 22);
  wav.writeUInt32LE(8000, 24); wav.writeUInt32LE(8000, 28); wav.writeUInt16LE(1, 32);
  wav.writeUInt16LE(8, 34); wav.write('data', 36); wav.writeUInt32LE(n, 40);
  writeFileSync(join(ROOT, 'silence.wav'), wav);
}
page('media.html', 'data-heartbeat="5"', '<audio src="/silence.wav" loop muted autoplay></audio>');
page('broken.html', `data-endpoint="${BROKEN}"`);
writeFileSync(join(ROOT, 'cross.html'), `<!doctype html><html><head><meta charset="utf-8">
<link rel="icon" href="data:,"><script defer src="${PIXELD}/px.js"></script></head><body>cross-origin</body></html>`);

const browser = await launch(['--host-resolver-rules=MAP *.test 127.0.0.1',
  '--autoplay-policy=no-user-gesture-required', '--mute-audio']);
// Headless Chromium says "HeadlessChrome" in its User-Agent, which pixeld counts as a bot (left
// out of every metric): the pages here are read with the User-Agent of the same Chrome with a
// window, as a reader's browser sends it.
const HUMAN_UA = (await (async () => {
  const c = await browser.newContext();
  const p = await c.newPage();
  const ua = await p.evaluate(() => navigator.userAgent);
  await c.close();
  return ua;
})()).replace('HeadlessChrome', 'Chrome');
const newContext = browser.newContext.bind(browser);
browser.newContext = (options = {}) => newContext({ userAgent: HUMAN_UA, ...options });
// A page with its errors collected: uncaught exceptions and anything on the console.
async function open(context, { clock = false } = {}) {
  const p = await context.newPage();
  p.problems = [];
  p.on('pageerror', (e) => p.problems.push('pageerror: ' + e));
  p.on('console', (m) => p.problems.push(`console.${m.type()}: ${m.text()}`));
  if (clock) await p.clock.install();
  return p;
}
function clean(p, what) {
  assert.deepEqual(p.problems, [], `${what}: the page logged or threw`);
}
// The reader moves the mouse every second for `secs` seconds of page time.
async function read(p, secs) {
  for (let i = 0; i < secs; i++) {
    await p.mouse.move(100 + (i % 7) * 40, 100 + (i % 5) * 30);
    await p.clock.runFor(1000);
  }
}
// The page's document becomes hidden or visible again, as when its tab is switched away:
// headless Chromium has no tab strip, so the Page Visibility API is set from the page.
async function setHidden(p, hidden) {
  await p.evaluate((h) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}

await checked(browser, async () => {
  // The script as served: the checked-in minified file, fresh, within its size budget.
  const served = Buffer.from(await (await api('/px.js')).arrayBuffer());
  const min = readFileSync(join(REPO, 'assets/tracker/px.min.js'));
  assert.ok(served.equals(min), '/px.js is not assets/tracker/px.min.js');
  const fresh = join(mkdtempSync(join(tmpdir(), 'px-')), 'px.min.js');
  execFileSync(join(REPO, 'scripts/build-px'), [fresh], { stdio: 'pipe' });
  assert.ok(readFileSync(fresh).equals(min), 'assets/tracker/px.min.js is stale: run scripts/build-px');
  const gz = gzipSync(served, { level: 9 }).length;
  assert.ok(gz <= 2048, `px.js is ${gz} bytes gzipped, over the 2 KB budget`);
  ok(`px.js is px.min.js, rebuilt identically from px.js, ${served.length} bytes, ${gz} gzipped (≤ 2048)`);

  // 1. Pageviews: the load, then SPA navigations (pushState twice, back once), each with the
  // previous in-app url as its referrer; replaceState to the same url is not a new view.
  {
    const ctx = await browser.newContext();
    const p = await open(ctx);
    await p.goto(site('spa.test') + '/spa.html', { referer: 'https://news.example/item/9' });
    // Pageviews only: the clicks are interaction, so on a slow machine (a 1 s tick that fires
    // late) leaving a page can also send a heartbeat of 1 s, as the tracker should.
    const views = (h) => h.filter((x) => x.action === 'pv');
    await hitsOf('spa.test', (h) => views(h).length === 1, 'the load');
    await p.click('#two');
    await p.click('#three');
    await p.evaluate(() => history.replaceState({}, '', location.href));
    await p.goBack();
    const h = await hitsOf('spa.test', (h) => views(h).length >= 4, 'three SPA navigations');
    await sleep(500);
    const all = views((await hits()).filter((x) => x.host === 'spa.test'));
    const base = site('spa.test');
    // Each view carries its referrer, so the set of (url, referrer) pairs shows the chain; the
    // order they reach the log is not the page's (two navigations a few ms apart are two
    // beacons that may arrive either way round), so both sides are compared sorted.
    const sorted = (v) => v.map((t) => JSON.stringify(t)).sort();
    assert.deepEqual(sorted(all.map((x) => [x.action, x.url, x.urlref])), sorted([
      ['pv', base + '/spa.html', 'https://news.example/item/9'],
      ['pv', base + '/app/two', base + '/spa.html'],
      ['pv', base + '/app/three?x=1', base + '/app/two'],
      ['pv', base + '/app/two', base + '/app/three?x=1'],
    ]), 'pageviews and referrers');
    assert.equal(all.length, 4, 'replaceState to the same url counted a view');
    assert.equal(new Set(h.map((x) => x.vid)).size, 1, 'one reader, one id');
    await summary('spa.test', (s) => s.views === 4, 'views of spa.test');
    clean(p, 'spa');
    ok('one load + 3 SPA navigations = 4 views, urls and referrers right, replaceState ignored');
    await ctx.close();
  }

  // 1b. Hash routing (data-hash): a fragment change is a pageview, the fragment kept.
  {
    const ctx = await browser.newContext();
    const p = await open(ctx);
    await p.goto(site('hash.test') + '/hash.html#/start');
    await hitsOf('hash.test', (h) => h.length === 1, 'the load');
    await p.evaluate(() => { location.hash = '#/inbox'; });
    const h = await hitsOf('hash.test', (h) => h.length === 2, 'a hash change');
    const base = site('hash.test') + '/hash.html';
    assert.deepEqual(h.map((x) => [x.url, x.urlref || '']), [
      [base + '#/start', ''],
      [base + '#/inbox', base + '#/start'],
    ]);
    clean(p, 'hash');
    ok('data-hash: a fragment change is a pageview with the fragment, referred by the previous one');
    await ctx.close();
  }

  // 2. Engaged time: 35 s of an active reader at data-heartbeat=5, 20 s idle (only the 5 s
  // after the last move count), 30 s hidden while the mouse keeps moving (nothing counts),
  // then 2 s visible and active and the page closed (the final beacon carries them).
  {
    const ctx = await browser.newContext();
    const p = await open(ctx, { clock: true });
    await p.goto(site('read.test') + '/read.html');
    await read(p, 35);
    let h = await hitsOf('read.test', (h) => engaged(h) >= 35, '35 s of reading');
    const beats = h.filter((x) => x.action === 'hb');
    assert.ok(beats.every((x) => Number(x.inc) <= 5), 'a heartbeat carried more than its interval');
    const s = await summary('read.test', (s) => s.engaged_seconds >= 30, 'engaged seconds');
    assert.ok(Math.abs(s.engaged_seconds - 35) <= 5, `engaged ${s.engaged_seconds}, not 35 ± 5`);
    assert.equal(s.views, 1);
    ok(`35 s active at data-heartbeat=5: ${beats.length} heartbeats, /v1/summary engaged_seconds = ${s.engaged_seconds}`);
    // An idle reader: only the 5 s after the last interaction count.
    await p.clock.runFor(20000);
    h = await hitsOf('read.test', (h) => engaged(h) > 35, 'the grace after the last move');
    await sleep(500);
    const idle = engaged((await hits()).filter((x) => x.host === 'read.test')) - 35;
    assert.ok(idle >= 1 && idle <= 5, `20 s idle added ${idle} s, not the ≤ 5 s grace`);
    ok(`20 s idle after the last move: ${idle} s more (the 5 s activity window), then nothing`);
    const before = 35 + idle;
    await setHidden(p, true);
    await read(p, 30);
    await setHidden(p, false);
    await read(p, 2);
    await p.close({ runBeforeUnload: true });
    h = await hitsOf('read.test', (h) => engaged(h) > before, 'the final beacon after the hidden time');
    await sleep(500);
    h = (await hits()).filter((x) => x.host === 'read.test');
    assert.equal(engaged(h) - before, 2, `hidden time counted: ${engaged(h) - before} s after ${before}`);
    clean(p, 'read');
    ok(`30 s hidden added nothing; 2 s more arrived in the final beacon on close (total ${engaged(h)} s)`);
    await ctx.close();
  }

  // 3. The final beacon alone: 4 s of reading at data-heartbeat=10 (no heartbeat due), then
  // the page is closed.
  {
    const ctx = await browser.newContext();
    const p = await open(ctx, { clock: true });
    await p.goto(site('close.test') + '/close.html');
    await read(p, 4);
    await sleep(300);
    assert.equal(engaged((await hits()).filter((x) => x.host === 'close.test')), 0, 'a heartbeat before its interval');
    await p.close({ runBeforeUnload: true });
    const h = await hitsOf('close.test', (h) => engaged(h) > 0, 'the final beacon on close');
    assert.equal(engaged(h), 4);
    ok('closing the page sends the last 4 engaged seconds (sendBeacon)');
    await ctx.close();
  }

  // 3b. Media: a playing audio element is engagement without any interaction.
  {
    const ctx = await browser.newContext();
    const p = await open(ctx, { clock: true });
    // Every beacon the page sends; `delivered` waits until the log holds as many of its hits,
    // so a count is read only once nothing is on its way (however loaded the machine).
    let sent = 0;
    p.on('request', (r) => { if (new URL(r.url()).pathname === '/p.gif') sent++; });
    const delivered = async () => {
      const h = await hitsOf('media.test', (h) => h.length >= sent, `all ${sent} beacons of the media page`);
      assert.equal(h.length, sent, 'one hit per beacon');
      return h;
    };
    await p.goto(site('media.test') + '/media.html');
    // The installed clock also runs with the wall clock: page time is 10 s of runFor plus the
    // real time these steps take, which bounds the engaged time from above.
    for (let i = 0; await p.evaluate(() => document.querySelector('audio').paused); i++) {
      assert.ok(i < 100, 'the audio never started playing');
      await sleep(100);
    }
    const t0 = Date.now();
    await p.clock.runFor(10000);
    const h = await hitsOf('media.test', (h) => engaged(h) >= 9, 'engaged time while audio plays');
    await p.evaluate(() => document.querySelector('audio').pause());
    const most = 10 + Math.ceil((Date.now() - t0) / 1000);
    // What it counted until the pause goes out with the next heartbeat (5 s); after that,
    // nothing more, however long the page stays open.
    await p.clock.runFor(10000);
    const got = engaged(await delivered());
    assert.ok(got >= 9 && got <= most, `${got} s engaged while playing 10 s (at most ${most} s of page time)`);
    await p.clock.runFor(20000);
    assert.equal(engaged(await delivered()), got, 'a paused player still counted');
    clean(p, 'media');
    ok(`a playing <audio> with no interaction: ${got} s engaged in 10 s; paused: none (${h.length} hits)`);
    await ctx.close();
  }

  // 4. Cookieless visitors: two browser contexts (same address and User-Agent) are one
  // visitor today; nothing is stored in the browser.
  {
    const pages = [];
    for (let i = 0; i < 2; i++) {
      const ctx = await browser.newContext();
      const p = await open(ctx);
      await p.goto(site('c.test') + '/plain.html');
      pages.push([ctx, p]);
    }
    const h = await hitsOf('c.test', (h) => h.length === 2, 'two contexts');
    assert.ok(h[0].vid && h[0].vid.length === 16 && h[0].vid === h[1].vid, `ids ${h[0].vid} ${h[1].vid}`);
    await summary('c.test', (s) => s.views === 2 && s.uniques === 1, 'one visitor');
    for (const [ctx, p] of pages) {
      const stored = await p.evaluate(() => [document.cookie, localStorage.length, sessionStorage.length]);
      assert.deepEqual(stored, ['', 0, 0], 'the script stored something');
      assert.deepEqual(await ctx.cookies(), [], 'a cookie was set');
      clean(p, 'cookieless');
      await ctx.close();
    }
    ok('two contexts, same address and UA: one derived id, one visitor, no cookie or storage');
  }

  // 5. data-vid="local": an id in localStorage, the same across loads of one context, another
  // in another context.
  {
    const ids = [];
    for (let i = 0; i < 2; i++) {
      const ctx = await browser.newContext();
      const p = await open(ctx);
      await p.goto(site('l.test') + '/local.html');
      await p.goto(site('l.test') + '/local.html?again');
      ids.push(await p.evaluate(() => localStorage.getItem('px_vid')));
      clean(p, 'local');
      // Both pageviews stored before the context closes (closing may cancel a request).
      await hitsOf('l.test', (h) => h.length === 2 * (i + 1), 'loads of this context');
      await ctx.close();
    }
    const h = await hitsOf('l.test', (h) => h.length === 4, 'two loads in two contexts');
    assert.ok(ids[0] && ids[1] && ids[0] !== ids[1], `local ids ${ids}`);
    assert.deepEqual(h.map((x) => x.vid).sort(), [ids[0], ids[0], ids[1], ids[1]].sort());
    await summary('l.test', (s) => s.uniques === 2, 'two local visitors');
    ok('data-vid="local": one id per browser in localStorage, sent with every hit');
  }

  // 6. Do Not Track and Global Privacy Control with data-respect-dnt: nothing is sent (a
  // control page in the same browser is, after it).
  {
    let controls = 0;
    for (const [api, value] of [['doNotTrack', '1'], ['globalPrivacyControl', true]]) {
      const ctx = await browser.newContext();
      await ctx.addInitScript(([k, v]) => Object.defineProperty(Navigator.prototype, k, { get: () => v }), [api, value]);
      const p = await open(ctx);
      await p.goto(site('dnt.test') + '/dnt.html');
      await p.evaluate(() => window.px('signup'));
      await p.goto(site('dnt-control.test') + '/plain.html');
      clean(p, 'dnt');
      // The control page's pageview is sent after its load: stored before the context
      // closes, or closing may cancel the request (a CI run lost one that way).
      controls += 1;
      await hitsOf('dnt-control.test', (h) => h.length === controls, 'the control pages');
      await ctx.close();
    }
    assert.equal((await hits()).filter((x) => x.host === 'dnt.test').length, 0, 'a hit despite DNT/GPC');
    ok('data-respect-dnt: nothing sent under doNotTrack=1 or globalPrivacyControl');
  }

  // 7. Events: one queued before the script loaded, a custom one, a download, an outbound
  // link that leaves the page (the beacon survives it); an internal link is none. They are
  // hits, not views.
  {
    const ctx = await browser.newContext();
    await ctx.route('https://elsewhere.example/**', (r) => r.fulfill({ body: 'elsewhere', contentType: 'text/html' }));
    const p = await open(ctx);
    await p.goto(site('e.test') + '/events.html');
    await p.evaluate(() => window.px('signup', { plan: 'pro' }));
    await p.click('#in');
    await p.click('#dl');
    await p.click('#out');
    await p.waitForURL('https://elsewhere.example/story');
    const h = await hitsOf('e.test', (h) => h.filter((x) => x.action === 'event').length >= 4, 'four events');
    const ev = h.filter((x) => x.action === 'event')
      .map((x) => [x.name, x.props ? JSON.parse(decodeURIComponent(x.props)) : null]);
    // Sorted: each event is its own beacon, and beacons sent ms apart may arrive either way round.
    const sortedEv = (v) => v.map((t) => JSON.stringify(t)).sort();
    assert.deepEqual(sortedEv(ev), sortedEv([
      ['early', { n: 1 }],
      ['signup', { plan: 'pro' }],
      ['download', { url: site('e.test') + '/files/report.pdf?v=2' }],
      ['outbound', { url: 'https://elsewhere.example/story' }],
    ]));
    const views = h.filter((x) => x.action === 'pv').length;
    await summary('e.test', (s) => s.hits === h.length && s.views === views, 'events as hits');
    // And a dimension: each name once, the pageviews under `pageview`.
    const byEvent = Object.fromEntries((await (await api('/v1/top?from=-30m&site=e.test&dim=event')).json())
      .items.map((i) => [i.key, i.events]));
    assert.deepEqual(byEvent, { pageview: views, early: 1, signup: 1, download: 1, outbound: 1 });
    ok(`events: queued, custom, download, outbound (leaving the page) stored with name and props, an internal link none; ${views} views, ${h.length} hits; by name in the event dimension`);
    await ctx.close();
  }

  // 8. An old browser: no sendBeacon, no fetch, no history API. The script falls back to an
  // image and neither throws nor logs.
  {
    const ctx = await browser.newContext();
    await ctx.addInitScript(() => {
      delete Navigator.prototype.sendBeacon;
      window.fetch = undefined;
      History.prototype.pushState = undefined;
      History.prototype.replaceState = undefined;
    });
    const p = await open(ctx);
    await p.goto(site('o.test') + '/plain.html');
    await p.evaluate(() => window.px('old'));
    await hitsOf('o.test', (h) => h.length === 2, 'an old browser');
    clean(p, 'old browser');
    ok('no sendBeacon, fetch or history: pageview and event sent by image, no error');
    await ctx.close();
  }

  // 9. A broken endpoint (nothing listens): the script logs nothing and nothing throws. What
  // reaches the console is read from the DevTools protocol, which tells the page's own output
  // (console API calls, exceptions, javascript log entries) from the network log entries
  // Chromium itself adds for every failed request, which no script can suppress.
  {
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    await p.clock.install();
    const cdp = await ctx.newCDPSession(p);
    const said = [];
    const net = [];
    cdp.on('Runtime.consoleAPICalled', (e) => said.push('console.' + e.type));
    cdp.on('Runtime.exceptionThrown', (e) => said.push('exception: ' + e.exceptionDetails.text));
    cdp.on('Log.entryAdded', (e) => (e.entry.source === 'network' ? net : said).push(`${e.entry.source}: ${e.entry.text} ${e.entry.url || ''}`));
    p.on('pageerror', (e) => said.push('pageerror: ' + e));
    await cdp.send('Runtime.enable');
    await cdp.send('Log.enable');
    await p.goto(site('b.test') + '/broken.html');
    await p.evaluate(() => window.px('lost'));
    await read(p, 12);
    await sleep(1000);
    assert.deepEqual(said, [], 'the script said something or threw');
    assert.ok(net.length >= 2 && net.every((t) => t.includes(BROKEN)), `network entries: ${net}`);
    assert.equal(await p.evaluate(() => document.title), 'broken.html');
    ok(`a broken endpoint: no console output or exception from the script (Chromium's own network log: ${net.length} failed requests)`);
    await ctx.close();
  }

  // 10. A page on another origin loading the script from pixeld itself: its hits go to the
  // pixel beside the script, across origins.
  {
    const ctx = await browser.newContext();
    const p = await open(ctx);
    await p.goto(site('x.test') + '/cross.html');
    const h = await hitsOf('x.test', (h) => h.length === 1, 'a cross-origin page');
    assert.equal(h[0].action, 'pv');
    clean(p, 'cross-origin');
    ok('cross-origin: the script from pixeld sends to pixeld\'s /p.gif');
    await ctx.close();
  }

  // 11. Same origin under the dashboard's Content-Security-Policy: the script loads and
  // sends without a violation.
  {
    const ctx = await browser.newContext();
    const p = await open(ctx);
    await p.goto(PIXELD + '/');
    const violations = [];
    await p.exposeFunction('cspViolation', (v) => violations.push(v));
    await p.evaluate(() => document.addEventListener('securitypolicyviolation', (e) => window.cspViolation(e.violatedDirective + ' ' + e.blockedURI)));
    await p.addScriptTag({ url: '/px.js' });
    const h = await hitsOf('127.0.0.1', (h) => h.some((x) => x.url === PIXELD + '/'), 'the dashboard page');
    assert.equal(h.filter((x) => x.url === PIXELD + '/').length, 1);
    assert.deepEqual(violations, [], 'CSP violations');
    ok('on the dashboard\'s origin, under its CSP: loaded and sent, no violation');
    await ctx.close();
  }
});
