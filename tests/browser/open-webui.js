// Open WebUI through the site: load the page, send a message, wait for the stand-in's answer.
const { open, finish } = require('./common.js');
(async () => {
  const { ctx, page, record } = await open((process.env.OUT || '.') + '/profile');
  await page.goto('https://ai.test:8443/', { waitUntil: 'domcontentloaded' });
  const input = page.locator('#chat-input');
  await input.waitFor({ timeout: 60000 });
  // First visit: the "what's new" dialog covers the page; close it as a user would.
  const dialog = page.locator('div[role="dialog"]');
  await page.waitForTimeout(1000);
  if (await dialog.first().isVisible().catch(() => false)) {
    const ok = dialog.getByRole('button', { name: /Okay|Let's Go|Close/i }).first();
    if (await ok.isVisible().catch(() => false)) await ok.click(); else await page.keyboard.press('Escape');
    await dialog.first().waitFor({ state: 'hidden', timeout: 10000 }).catch(() => {});
  }
  if (!(await page.locator('body').innerText()).includes('qwen3:32b')) {
    await page.locator('#model-selector-0-button').first().click();
    await page.getByText('qwen3:32b').first().click({ timeout: 15000 });
  }
  await input.click();
  await page.keyboard.type('Hello from the browser test');
  await page.keyboard.press('Enter');
  let answered = false;
  for (const t0 = Date.now(); Date.now() - t0 < 60000; await page.waitForTimeout(500)) {
    const msgs = await page.locator('#response-content-container').allInnerTexts().catch(() => []);
    if (msgs.some(m => m.includes('You said: Hello from the browser test'))) { answered = true; break; }
  }
  await finish(ctx, page, record, answered);
})().catch(e => { console.error(e); process.exit(2); });
