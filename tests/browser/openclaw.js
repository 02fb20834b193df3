// OpenClaw's web chat through the site: the first load asks for this browser's approval,
// which is given on the host as the README says (`openclaw devices approve <id>`); then a
// message is sent and the stand-in's answer awaited.
const { execFileSync } = require('child_process');
const { open, finish } = require('./common.js');
const TOKEN = 'browser-test-token-0123456789';
(async () => {
  const { ctx, page, record } = await open((process.env.OUT || '.') + '/profile');
  await page.goto('https://ai.test:8443/#token=' + TOKEN, { waitUntil: 'domcontentloaded' });
  const box = page.locator('textarea').first();
  for (const t0 = Date.now(); Date.now() - t0 < 60000; await page.waitForTimeout(500)) {
    if (await box.isVisible().catch(() => false)) break;
    const m = (await page.locator('body').innerText()).match(/devices approve ([0-9a-f-]{36})/);
    if (m) {
      execFileSync(process.env.OPENCLAW, ['devices', 'approve', m[1], '--token', TOKEN], { stdio: 'inherit' });
      await page.waitForTimeout(2000);
    }
  }
  // Sent once the page has connected: until then Enter leaves the text in the box.
  await box.fill('Hello from the browser test');
  for (const t0 = Date.now(); Date.now() - t0 < 30000; await page.waitForTimeout(1000)) {
    await box.press('Enter');
    await page.waitForTimeout(1000);
    if ((await box.inputValue()) === '') break;
  }
  let answered = false;
  for (const t0 = Date.now(); Date.now() - t0 < 90000; await page.waitForTimeout(1000)) {
    if (/You said:/.test(await page.locator('body').innerText())) { answered = true; break; }
  }
  await finish(ctx, page, record, answered);
})().catch(e => { console.error(e); process.exit(2); });
