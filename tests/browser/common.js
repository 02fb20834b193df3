// What both browser drivers share: Chromium as the machine has it, and the record of what
// went wrong on the page (CSP violations, script errors, failed requests).
const { chromium } = require('playwright-core');

const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--host-resolver-rules=MAP ai.test 10.99.0.1'];

async function open(profile) {
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium', headless: true, ignoreHTTPSErrors: true, args: ARGS });
  const page = ctx.pages()[0] || await ctx.newPage();
  const record = { failures: [], notes: [], requests: [] };
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', e => {
      console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI);
    });
  });
  page.on('console', m => {
    const t = m.text();
    // A service worker's script is fetched without the page's certificate exception: an
    // artifact of the self-signed test certificate.
    if (/SSL certificate error occurred when fetching the script/.test(t)) return;
    if (/Failed to load resource/.test(t)) return; // recorded below with its URL
    if (m.type() === 'error' || /CSP|Refused/.test(t)) record.failures.push('console: ' + t.slice(0, 300));
  });
  page.on('pageerror', e => record.failures.push('page error: ' + e.message));
  page.on('requestfailed', r => {
    // The page cancelling its own loads (navigation, a re-rendered image) is no failure.
    if (/sw\.js$/.test(r.url()) || (r.failure() || {}).errorText === 'net::ERR_ABORTED') return;
    record.failures.push('request failed: ' + r.url() + ' ' + (r.failure() || {}).errorText);
  });
  page.on('response', r => {
    record.requests.push(r.status() + ' ' + r.request().method() + ' ' + r.url());
    if (r.status() >= 400) record.notes.push(r.status() + ' ' + r.url());
  });
  return { ctx, page, record };
}

async function finish(ctx, page, record, answered) {
  const out = process.env.OUT || '.';
  await page.screenshot({ path: out + '/page.png' });
  require('fs').writeFileSync(out + '/requests.txt', record.requests.join('\n') + '\n');
  console.log('answered:', answered);
  record.notes.forEach(n => console.log('  answered >= 400 (by the UI; the audit check tells): ' + n));
  console.log('problems:', record.failures.length);
  record.failures.forEach(p => console.log('  ' + p));
  await ctx.close();
  process.exit(answered && record.failures.length === 0 ? 0 : 1);
}

module.exports = { open, finish };
