// What the browser scripts (dashboard.mjs, dashboard_off.mjs, tracker.mjs) share: Chromium
// started the same way, numbered checks, and the last line and exit code.
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// playwright starts Chromium with a fresh, empty profile of its own (it refuses
// --user-data-dir here); the flags keep Chromium from calling home.
export function launch(extraArgs = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', ...extraArgs],
  });
}

let checks = 0;
// One passed check, numbered, TAP-like.
export function ok(what) { checks++; console.log('ok ' + checks + ' - ' + what); }

// Runs the checks of `body`: the first that fails is printed as "not ok" with its stack and
// ends them; then the browser is closed, the summary printed, and the process exits (1 when
// a check failed).
export async function checked(browser, body) {
  let failed = false;
  try {
    await body();
  } catch (e) {
    failed = true;
    console.error('not ok - ' + (e && e.stack || e));
  } finally {
    await browser.close();
  }
  console.log(`browser checks: ${checks} ok${failed ? ', 1 not ok' : ''}`);
  process.exit(failed ? 1 : 0);
}
