// The dashboard in a real browser: Debian's Chromium, driven by playwright-core, against a
// running pixeld that tests/query/dashboard_browser.rs started and fed. Run by that test; by hand:
//   PIXELD_URL=http://127.0.0.1:5580 PIXELD_TOKEN=… PIXELD_OUT=/tmp node tests/browser/dashboard.mjs
//
// Asserts, each against pixeld's own JSON API for the range the page says it shows: the
// headline views equal /v1/summary, the top pages equal /v1/top, the chart has one point per
// bucket of /v1/timeseries; within 10 s of a new burst the live numbers grow by the burst;
// the page asks for the token, works from the keyboard, and loads nothing from another
// origin. Screenshots (desktop and phone) go to PIXELD_OUT. Exits non-zero on the first
// failed check, naming it.
import { checked, launch, ok } from './harness.mjs';
import assert from 'node:assert/strict';
import { join } from 'node:path';

const BASE = process.env.PIXELD_URL;
const TOKEN = process.env.PIXELD_TOKEN || '';
const OUT = process.env.PIXELD_OUT || '.';
const BURST = 500;
if (!BASE) { console.error('PIXELD_URL is not set'); process.exit(2); }

const auth = TOKEN ? { Authorization: 'Bearer ' + TOKEN } : {};
async function query(body) {
  const r = await fetch(BASE + '/v1/query', {
    method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  assert.equal(r.status, 200, `POST /v1/query ${JSON.stringify(body)}: ${r.status}`);
  return r.json();
}

async function api(path) {
  const r = await fetch(BASE + path, { headers: auth });
  assert.equal(r.status, 200, `${path}: HTTP ${r.status}`);
  return r.json();
}
const digits = (s) => s.replace(/[^0-9]/g, '');

// What the page shows, read in one go (so that a snapshot cannot land halfway).
async function shown(page) {
  return page.evaluate(() => {
    const m = document.getElementById('main');
    const v = document.querySelector('#t-views .value');
    const list = [...document.querySelectorAll('#top-pages li[data-key]')]
      .map((li) => ({ key: li.dataset.key, views: Number(li.dataset.views) }));
    const st = window.pixeldDashboard;
    return {
      from: Number(m.dataset.from), to: Number(m.dataset.to), site: m.dataset.site, range: m.dataset.range,
      views: Number(v.dataset.value), viewsText: v.textContent,
      visits: document.querySelector('#t-visits .value').dataset.value,
      bounce: document.querySelector('#t-bounce .value').dataset.value,
      visitDuration: document.querySelector('#t-duration .value').dataset.value,
      viewsFormatted: new Intl.NumberFormat(undefined).format(Number(v.dataset.value)),
      top: list,
      points: Number(document.getElementById('chart').dataset.points),
      chartLen: st.chart ? st.chart.data[0].length : -1,
      chartViews: st.chart ? st.chart.data[1].reduce((a, b) => a + (b || 0), 0) : -1,
    };
  });
}

async function compareWithApi(page, step, label) {
  const s = await shown(page);
  const site = s.site ? '&site=' + encodeURIComponent(s.site) : '';
  const range = `from=${s.from}&to=${s.to}${site}`;
  const sum = await api(`/v1/summary?${range}`);
  assert.equal(s.views, sum.views, `${label}: headline views ${s.views} != /v1/summary ${sum.views}`);
  assert.equal(digits(s.viewsText), String(sum.views), `${label}: headline text ${s.viewsText}`);
  assert.equal(s.viewsText, s.viewsFormatted, `${label}: headline not in the locale's format`);
  ok(`${label}: headline views ${s.viewsText} = /v1/summary`);
  assert.deepEqual([s.visits, s.bounce, s.visitDuration],
    [String(sum.visits), String(sum.bounce_rate), String(sum.visit_duration)],
    `${label}: headline visits, bounce rate, visit duration differ from /v1/summary`);
  ok(`${label}: headline visits ${s.visits}, bounce rate ${s.bounce}, visit duration ${s.visitDuration} = /v1/summary`);
  const top = await api(`/v1/top?dim=url&limit=10&${range}`);
  assert.deepEqual(s.top, top.items, `${label}: top pages differ from /v1/top`);
  assert.ok(s.top.length > 0, `${label}: no top pages shown`);
  ok(`${label}: top ${s.top.length} pages = /v1/top`);
  const ts = await api(`/v1/timeseries?step=${step}&${range}`);
  assert.equal(s.points, ts.points.length, `${label}: chart has ${s.points} points, /v1/timeseries ${ts.points.length}`);
  assert.equal(s.chartLen, ts.points.length, `${label}: uPlot holds ${s.chartLen} points`);
  const perStep = step === '1h' ? 3600 : 60;
  assert.equal(ts.points.length, (s.to - s.from) / perStep, `${label}: not one point per bucket`);
  assert.equal(s.chartViews, sum.views, `${label}: the chart's views do not add up to the headline`);
  ok(`${label}: chart has one point per ${step} bucket (${s.points})`);
  // Channels, devices and countries: the lists show /v1/top?dim= of the same range.
  for (const [id, dim] of [['top-channels', 'channel'], ['top-devices', 'device'], ['top-countries', 'country']]) {
    const want = (await api(`/v1/top?dim=${dim}&limit=10&${range}`)).items;
    // The realtime view refreshes these lists at most every 5 s.
    await page.waitForFunction(([id, w]) => JSON.stringify([...document.querySelectorAll(`#${id} li`)]
      .map((li) => [li.dataset.key, Number(li.dataset.views)])) === w,
    [id, JSON.stringify(want.map((it) => [it.key, it.views]))], { timeout: 20000 }).catch(() => {});
    const got = await page.evaluate((id) => [...document.querySelectorAll(`#${id} li`)]
      .map((li) => ({ key: li.dataset.key, views: Number(li.dataset.views) })), id);
    assert.deepEqual(got, want.map((it) => ({ key: it.key, views: it.views })), `${label}: ${dim} list differs from /v1/top`);
    assert.ok(got.length > 0, `${label}: no ${dim} shown`);
    ok(`${label}: ${got.length} ${dim} values = /v1/top?dim=${dim}`);
  }
  return s;
}

const browser = await launch();
await checked(browser, async () => {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, locale: 'en-US' });
  const page = await context.newPage();
  const foreign = [];
  const errors = [];
  page.on('request', (r) => { if (!r.url().startsWith(BASE) && !r.url().startsWith('data:')) foreign.push(r.url()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error' && !/401/.test(m.text())) errors.push(m.text()); });

  await page.goto(BASE + '/');
  if (TOKEN) {
    // The page meets a 401 and asks for the token.
    await page.locator('#auth').waitFor({ state: 'visible', timeout: 10000 });
    ok('the page asks for the token');
    await page.fill('#token', 'not-the-token-but-long-enough');
    await page.press('#token', 'Enter');
    await page.locator('#auth-error').filter({ hasText: 'refused' }).waitFor({ timeout: 10000 });
    ok('a wrong token is refused');
    await page.fill('#token', TOKEN);
    await page.press('#token', 'Enter');
  }
  await page.waitForSelector('body[data-ready=true]', { timeout: 15000 });
  await page.waitForFunction(() => document.querySelectorAll('#top-pages .spark polyline').length > 0, null, { timeout: 15000 });
  await page.waitForFunction(() => /\/s$/.test(document.getElementById('h-in').textContent), null, { timeout: 15000 });
  ok('the realtime view renders from /v1/live');

  await compareWithApi(page, '1m', 'realtime 30 min');
  const health = await page.evaluate(() => document.getElementById('h-shards').textContent);
  const metrics = await (await fetch(BASE + '/metrics', { headers: auth })).text();
  const shards = metrics.split('\n').filter((l) => l.startsWith('pixeld_durable_offset{')).length;
  assert.equal(health, String(shards), 'health strip shards != /metrics');
  ok(`health strip shows ${health} shards, as /metrics`);
  const bots = await page.evaluate(() => document.getElementById('h-bots').textContent);
  assert.ok(/left out$/.test(bots), `health strip's bots: ${bots}`);
  ok(`health strip shows the bots left out (${bots})`);

  // The Events card: custom events by name, as POST /v1/query counts them over the range shown.
  {
    let seenE, wantE;
    for (let i = 0; i < 20; i++) {
      const range = await page.evaluate(() => [String(window.pixeldDashboard.from), String(window.pixeldDashboard.to)]);
      const r = await query({ metrics: ['events', 'conversion_rate'], dimensions: ['event'], date_range: range, limit: 10,
        filters: [['is_not', 'event', ['pageview']]] });
      wantE = r.results.map((x) => [x.dimensions[0], x.metrics[0], x.metrics[1]]);
      seenE = await page.evaluate(() => [...document.querySelectorAll('#top-events li:not(.empty)')]
        .map((li) => [li.dataset.key, Number(li.dataset.views), Number(li.dataset.rate)]));
      if (JSON.stringify(seenE) === JSON.stringify(wantE)) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.deepEqual(seenE, wantE, 'the Events card differs from POST /v1/query');
    assert.deepEqual(seenE.map(([k]) => k), ['signup', 'download'], `the Events card: ${JSON.stringify(seenE)}`);
    assert.ok(seenE.every(([, , rate]) => rate > 0 && rate < 1), `the Events card's conversion rates: ${JSON.stringify(seenE)}`);
    const convs = await page.evaluate(() => [...document.querySelectorAll('#top-events .conv')].map((e) => e.textContent));
    assert.equal(convs.length, seenE.length, `every event shows its conversion rate: ${convs}`);
    ok(`Events card: ${seenE.map(([k, n, rate]) => `${k} ${n} (${(rate * 100).toFixed(2)} % of visitors)`).join(', ')} = POST /v1/query`);
  }

  // The Countries card's Region tab lists regions (a city database's subdivisions, ISO
  // 3166-2) as /v1/top?dim=region does; the Country tab brings the countries back.
  {
    await page.click('#countries-title ~ .sort button[data-dim=region]');
    let seenR, wantR;
    for (let i = 0; i < 20; i++) {
      const range = await page.evaluate(() => `from=${window.pixeldDashboard.from}&to=${window.pixeldDashboard.to}`);
      wantR = (await api(`/v1/top?dim=region&limit=10&${range}`)).items.map((it) => [it.key, it.views]);
      seenR = await page.evaluate(() => [...document.querySelectorAll('#top-countries li:not(.empty)')]
        .map((li) => [li.dataset.key, Number(li.dataset.views)]));
      if (JSON.stringify(seenR) === JSON.stringify(wantR)) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.deepEqual(seenR, wantR, 'the Region tab differs from /v1/top?dim=region');
    assert.ok(seenR.some(([k]) => k === 'US-CA') && seenR.some(([k]) => k === 'DE-BY'), `the Region tab: ${JSON.stringify(seenR)}`);
    ok(`Region tab: ${seenR.map(([k, n]) => `${k} ${n}`).join(', ')} = /v1/top?dim=region`);
    await page.click('#countries-title ~ .sort button[data-dim=country]');
    await page.waitForFunction(() => [...document.querySelectorAll('#top-countries li')].some((li) => li.dataset.key === 'US'),
      null, { timeout: 20000 });
    ok('the Country tab lists countries again');
  }

  // Every listed number carries its change against the previous period: the channels' and
  // the sites' equal POST /v1/query with comparisons over the range shown.
  for (const [id, dim] of [['top-channels', 'channel'], ['top-sites', 'site']]) {
    let seenC, wantC;
    for (let i = 0; i < 20; i++) {
      const range = await page.evaluate(() => [String(window.pixeldDashboard.from), String(window.pixeldDashboard.to)]);
      seenC = await page.evaluate((id) => [...document.querySelectorAll(`#${id} li:not(.empty)`)]
        .map((li) => [li.dataset.key, li.dataset.change || '']), id);
      const keys = seenC.map(([k]) => k);
      const r = await query({ metrics: ['views'], dimensions: [dim], filters: [['is', dim, keys]], limit: keys.length,
        date_range: range, include: { comparisons: 'previous_period' } });
      const by = new Map(r.results.map((x) => [x.dimensions[0], x.comparison.change[0] == null ? 'new' : String(x.comparison.change[0])]));
      wantC = keys.map((k) => [k, by.get(k) || '']);
      if (keys.length && JSON.stringify(seenC) === JSON.stringify(wantC)) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.deepEqual(seenC, wantC, `${id}: the changes differ from POST /v1/query`);
    assert.ok(seenC.length > 0 && seenC.every(([, c]) => c !== ''), `${id}: every row has its change`);
    ok(`${id}: ${seenC.length} changes vs the previous period = POST /v1/query`);
  }

  // The filter bar: a click on a channel filters the dimension cards, the headline's views and
  // visitors and the chart by it; they equal POST /v1/query with that filter over the range
  // shown; its chip removes it.
  const first = page.locator('#top-channels li').first();
  const channel = await first.getAttribute('data-key');
  await first.click();
  await page.waitForFunction(() => !document.getElementById('filterbar').hidden
    && document.getElementById('filter-sum').dataset.views, null, { timeout: 15000 });
  let seen, want;
  for (let i = 0; i < 20; i++) {
    const range = await page.evaluate(() => [String(window.pixeldDashboard.from), String(window.pixeldDashboard.to)]);
    const filters = [['is', 'channel', [channel]]];
    const [devices, sum, pages] = await Promise.all([
      query({ metrics: ['views'], dimensions: ['device'], filters, date_range: range, limit: 10 }),
      query({ metrics: ['views', 'visitors', 'visits', 'bounce_rate'], filters, date_range: range }),
      query({ metrics: ['views'], dimensions: ['url'], filters, date_range: range, limit: 10 }),
    ]);
    const [views, visitors, visits, bounce] = sum.results[0].metrics;
    want = {
      devices: devices.results.map((r) => [r.dimensions[0], r.metrics[0]]),
      views, tileViews: views, tileVisitors: visitors, tileVisits: visits, tileBounce: String(bounce),
      chartViews: views, filtered: 'true',
      pages: pages.results.map((r) => [r.dimensions[0], r.metrics[0]]),
    };
    seen = await page.evaluate(() => {
      const d = window.pixeldDashboard;
      const tile = (id) => Number(document.querySelector(`#${id} .value`).dataset.value);
      return {
        devices: [...document.querySelectorAll('#top-devices li')].map((li) => [li.dataset.key, Number(li.dataset.views)]),
        views: Number(document.getElementById('filter-sum').dataset.views),
        tileViews: tile('t-views'),
        tileVisitors: tile('t-uniques'),
        tileVisits: tile('t-visits'),
        tileBounce: document.querySelector('#t-bounce .value').dataset.value,
        chartViews: d.filtered ? [...d.filtered.points.values()].reduce((a, p) => a + p.views, 0) : -1,
        filtered: document.getElementById('main').dataset.filtered,
        pages: [...document.querySelectorAll('#top-pages li:not(.empty)')].map((li) => [li.dataset.key, Number(li.dataset.views)]),
      };
    });
    if (JSON.stringify(seen) === JSON.stringify(want)) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.deepEqual(seen, want, `filtered by channel ${channel}: the cards differ from POST /v1/query`);
  assert.ok(want.views > 0 && want.views <= (await api('/v1/summary?from=-30m')).views, 'a filter keeps part of the views');
  ok(`a click filters by channel ${channel}: devices, pages, headline (${want.tileVisits} visits entering from it) and chart (${want.views} views) = POST /v1/query`);
  const engaged = await page.evaluate(() => document.querySelector('#t-engaged .delta').textContent);
  assert.equal(engaged, 'not kept by dimension', 'engaged time is not filtered, and says so');
  await page.screenshot({ path: join(OUT, 'dashboard-filtered.png'), fullPage: true });
  await page.locator('#filter-chips .chip').click();
  await page.waitForFunction(() => document.getElementById('filterbar').hidden
    && document.getElementById('main').dataset.filtered === 'false', null, { timeout: 10000 });
  ok('the chip removes the filter (headline and chart unfiltered again)');

  // A filter no cell answers the pages by (a device): the top pages, referrers and sites are
  // read from the raw log, each equal to POST /v1/query with the scan (and its previous
  // period) over the range that scan read; the title says so.
  const devRow = page.locator('#top-devices li[data-key]').first();
  const device = await devRow.getAttribute('data-key');
  await devRow.click();
  await page.waitForFunction(() => ['top-pages', 'top-refs', 'top-sites']
    .every((id) => document.getElementById(id).dataset.scan === 'done'), null, { timeout: 30000 });
  for (const [id, dim, hint] of [['top-pages', 'url', 'pages-filter'], ['top-refs', 'ref_domain', 'refs-filter'],
    ['top-sites', 'site', 'sites-filter']]) {
    const got = await page.evaluate(([id, hint]) => ({
      range: window.pixeldDashboard.scans[id].range,
      filtered: document.getElementById(id).dataset.filtered,
      hint: document.getElementById(hint).textContent,
      shown: [...document.querySelectorAll(`#${id} li:not(.empty)`)]
        .map((li) => [li.dataset.key, Number(li.dataset.views), li.dataset.change || '']),
    }), [id, hint]);
    const r = await query({ metrics: ['views'], dimensions: [dim], filters: [['is', 'device', [device]]],
      date_range: got.range, limit: 10, include: { scan: true, comparisons: 'previous_period' } });
    assert.equal(r.meta.computed_from, 'a scan of the raw log');
    const wantRows = r.results.map((x) => [x.dimensions[0], x.metrics[0],
      x.comparison.change[0] == null ? 'new' : String(x.comparison.change[0])]);
    assert.ok(wantRows.length > 0, `${id}: the scan found nothing for device ${device}`);
    assert.deepEqual(got.shown, wantRows, `${id} under device ${device}: differs from the scan`);
    assert.equal(got.filtered, 'true', `${id}: not marked filtered`);
    assert.match(got.hint, /from the log at .* records in [\d.,]+ m?s/, `${id}: the title does not say it read the log`);
  }
  ok(`under device ${device}: top pages, referrers and sites read from the log = POST /v1/query with the scan`);
  // Engaged time under it too: a heartbeat's line says its reader's device.
  await page.waitForFunction(() => document.getElementById('t-engaged').dataset.scan === 'done', null, { timeout: 30000 });
  const tile = await page.evaluate(() => ({
    range: window.pixeldDashboard.scans['t-engaged'].range,
    value: Number(document.querySelector('#t-engaged .value').dataset.value),
    delta: document.querySelector('#t-engaged .delta').textContent,
  }));
  const er = await query({ metrics: ['engaged_seconds'], filters: [['is', 'device', [device]]],
    date_range: tile.range, include: { scan: true } });
  const wantEngaged = er.results.length ? er.results[0].metrics[0] : 0;
  assert.ok(wantEngaged > 0, `no engaged time for device ${device} in the log`);
  assert.equal(tile.value, wantEngaged, `engaged time under device ${device}: differs from the scan`);
  assert.match(tile.delta, /from the log$/, 'the engaged tile does not say it read the log');
  ok(`under device ${device}: engaged time read from the log (${wantEngaged} s) = POST /v1/query with the scan`);
  // Current visitors under it: those with a matching pageview in the live stream's last
  // five minutes.
  await page.waitForFunction(() => document.getElementById('t-current').dataset.filtered === 'true', null, { timeout: 15000 });
  const cur = await page.evaluate(() => ({
    range: window.pixeldDashboard.currentFiltered.range,
    value: Number(document.querySelector('#t-current .value').dataset.value),
  }));
  const cr = await query({ metrics: ['visitors'], filters: [['is', 'device', [device]]], date_range: cur.range });
  const wantCur = cr.results.length ? cr.results[0].metrics[0] : 0;
  assert.equal(Number(cur.range[1]) - Number(cur.range[0]), 300, 'five minutes');
  assert.equal(cur.value, wantCur, `current visitors under device ${device}: differ from POST /v1/query`);
  ok(`under device ${device}: current visitors ${wantCur} = POST /v1/query over the live stream's last 5 minutes`);
  await page.locator('#filter-chips .chip').click();
  await page.waitForFunction(() => document.getElementById('filterbar').hidden
    && document.getElementById('top-pages').dataset.filtered === 'false'
    && document.getElementById('top-refs').dataset.filtered === 'false'
    && !document.getElementById('top-pages').dataset.scan
    && document.getElementById('t-current').dataset.filtered === 'false', null, { timeout: 10000 });
  ok('its chip removes it: the lists and current visitors are unfiltered again');

  const pixel = await page.evaluate(() => document.getElementById('h-pixel').textContent);
  assert.ok(pixel.startsWith('drop'), `health strip's pixel overload: ${pixel}`);
  ok(`health strip shows the pixel's overload choice (${pixel})`);
  await page.screenshot({ path: join(OUT, 'dashboard.png'), fullPage: true });
  ok('screenshot ' + join(OUT, 'dashboard.png'));

  // A burst now: the live numbers must grow by it within 10 s, with no reload.
  const before = await shown(page);
  const now = Date.now() / 1000;
  const lines = [];
  for (let i = 0; i < BURST; i++) {
    lines.push(JSON.stringify({ msec: now.toFixed(3), url: 'https://www.example.com/burst', urlref: '', vid: 'burst-' + (i % 50), action: 'pageview' }));
  }
  const r = await fetch(BASE + '/v1/events', { method: 'POST', body: lines.join('\n'), headers: auth });
  assert.equal(r.status, 200, 'burst POST /v1/events');
  await page.waitForFunction((want) => Number(document.querySelector('#t-views .value').dataset.value) >= want,
    before.views + BURST, { timeout: 10000 });
  const after = await shown(page);
  assert.ok(after.top.some((t) => t.key === 'https://www.example.com/burst'), 'the burst page is not in the top pages');
  ok(`live: views grew ${before.views} -> ${after.views} within 10 s of a burst of ${BURST}`);
  await compareWithApi(page, '1m', 'realtime after the burst');

  // Keyboard only: from the 30 min radio, → selects 6 h, → again 24 h (hour buckets).
  await page.focus('#r-30m');
  await page.keyboard.press('ArrowRight');
  await page.keyboard.press('ArrowRight');
  await page.waitForFunction(() => document.getElementById('main').dataset.range === '24h' && document.body.dataset.ready === 'true', null, { timeout: 15000 });
  await compareWithApi(page, '1h', '24 h by keyboard');

  // Top pages by entries and by visitors: the list follows the sort buttons and equals
  // /v1/top?sort=….
  for (const sort of ['entries', 'visitors']) {
    await page.click(`.sort button[data-sort=${sort}]`);
    await page.waitForFunction((s) => document.getElementById('top-pages').dataset.sort === s, sort, { timeout: 15000 });
    const bySort = await shown(page);
    const range = `from=${bySort.from}&to=${bySort.to}` + (bySort.site ? '&site=' + encodeURIComponent(bySort.site) : '');
    const want = await api(`/v1/top?dim=url&sort=${sort}&limit=10&${range}`);
    assert.deepEqual(bySort.top, want.items.map((it) => ({ key: it.key, views: it[sort] })),
      `top pages sorted by ${sort} differ from /v1/top?sort=${sort}`);
    assert.ok(bySort.top.length > 0, `no pages shown by ${sort}`);
    ok(`top pages sorted by ${sort} (${bySort.top.length}) = /v1/top?dim=url&sort=${sort}`);
  }
  await page.click('.sort button[data-sort=views]');
  await page.waitForFunction(() => document.getElementById('top-pages').dataset.sort === 'views', null, { timeout: 15000 });
  await page.focus('#chart');
  await page.keyboard.press('End');
  const legend = await page.evaluate(() => [...document.querySelectorAll('.u-legend .u-value')].map((e) => e.textContent));
  assert.ok(legend.some((t) => /\d/.test(t) && t !== '–'), 'chart cursor shows no values from the keyboard: ' + legend);
  ok('the chart reads out bucket values from the keyboard: ' + legend.join(' | '));

  // One site: numbers follow the selector.
  const site = (await api('/v1/top?dim=site&from=-1h&limit=1')).items[0].key;
  await page.selectOption('#site', site);
  await page.waitForFunction((s) => document.getElementById('main').dataset.site === s && document.body.dataset.ready === 'true', site, { timeout: 15000 });
  const one = await compareWithApi(page, '1h', `24 h, site ${site}`);
  assert.equal(one.site, site);

  // A phone: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('label[for=r-30m]');
  await page.waitForFunction(() => document.getElementById('main').dataset.range === '30m' && document.body.dataset.ready === 'true', null, { timeout: 15000 });
  // The chart follows the new width on the next frames.
  await page.waitForFunction(() => document.documentElement.scrollWidth <= window.innerWidth, null, { timeout: 5000 }).catch(() => {});
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  const wide = await page.evaluate(() => [...document.querySelectorAll('body *')]
    .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1).slice(0, 5)
    .map((e) => `${e.tagName}#${e.id}.${e.className}: right ${Math.round(e.getBoundingClientRect().right)}`));
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone screen: ${wide.join('; ')}`);
  await page.screenshot({ path: join(OUT, 'dashboard-phone.png'), fullPage: true });
  ok('phone layout fits 390 px; screenshot ' + join(OUT, 'dashboard-phone.png'));

  assert.deepEqual(foreign, [], 'requests left the machine');
  ok('no request to another origin');
  assert.deepEqual(errors, [], 'errors in the page');
  ok('no script errors');
});
