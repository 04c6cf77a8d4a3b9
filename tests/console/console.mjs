// The admin console in a real browser (Debian's Chromium, driven by
// playwright-core). Run by tests/tests/console_browser.rs, which starts the real
// binaries, forces a dead letter and checks the fake provider afterwards.
//
// Env: CONSOLE_URL (the admin listener, e.g. http://127.0.0.1:9091),
// CONSOLE_TOKEN, DEAD_LETTER_ID (the forced dead letter's event id, to
// replay), OTHER_LETTER_ID (a second one, to purge),
// SHOTS (a directory for screenshots of every page), CHROMIUM (default
// /usr/bin/chromium). Prints one line per step; exits 1 on the first
// failed check.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const base = process.env.CONSOLE_URL;
const token = process.env.CONSOLE_TOKEN;
const deadId = process.env.DEAD_LETTER_ID;
const otherId = process.env.OTHER_LETTER_ID;
const shots = process.env.SHOTS;
if (!base || !token || !deadId || !otherId) {
  console.error("CONSOLE_URL, CONSOLE_TOKEN, DEAD_LETTER_ID and OTHER_LETTER_ID are required");
  process.exit(2);
}
if (shots) mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) {
    console.error(`FAILED: ${what}`);
    throw new Error(what);
  }
  console.log(`ok: ${what}`);
}

async function shot(page, name) {
  if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();

  // Not signed in: every page sends to the sign-in form.
  await page.goto(`${base}/console/dead-letters`);
  check(new URL(page.url()).pathname === "/console/sign-in", "a page without a session goes to sign-in");
  await shot(page, "sign-in");

  // A wrong token is refused, and no session is made.
  await page.fill("#token", "not-the-admin-token-0000");
  const [wrong] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/console/sign-in") && r.request().method() === "POST"),
    page.click("button[type=submit]"),
  ]);
  check(wrong.status() === 401, `a wrong token is refused (${wrong.status()})`);
  check((await page.textContent(".error")).includes("Wrong token"), "the page says the token is wrong");
  check((await context.cookies()).length === 0, "a wrong token sets no cookie");

  // The right token: a Secure, HttpOnly, SameSite=Strict session cookie.
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(`${base}/console`), page.click("button[type=submit]")]);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "vestnik_console");
  check(!!session, "signing in sets the session cookie");
  check(session.secure && session.httpOnly && session.sameSite === "Strict",
    `the cookie is Secure, HttpOnly, SameSite=Strict (${JSON.stringify({ secure: session.secure, httpOnly: session.httpOnly, sameSite: session.sameSite })})`);
  check(await page.isVisible("#queues"), "the overview shows the queues");
  const dlqRow = await page.textContent("#queues");
  check(dlqRow.includes(".dlq"), "the overview lists the DLQ");
  await shot(page, "overview");

  // The dead letter is listed, masked.
  await page.click("nav >> text=Dead letters");
  const listed = page.locator(`tr[data-id="${deadId}"]`);
  check((await listed.count()) === 1, "the forced dead letter is listed");
  const rowText = await listed.textContent();
  check(rowText.includes("config"), "with its reason");
  check(!/\+?7916\d{7}/.test(await page.content()), "no phone in clear on the page");
  await shot(page, "dead-letters");

  // The filter form: no letter is a recipient's failure; both are config,
  // both the tenant's.
  await page.selectOption("#reason", "recipient");
  await Promise.all([page.waitForURL(/reason=recipient/), page.click("fieldset button[type=submit]")]);
  const none = await page.locator("tr[data-id]").count();
  await page.selectOption("#reason", "config");
  await page.selectOption("#tenant", "acme");
  await Promise.all([page.waitForURL(/reason=config/), page.click("fieldset button[type=submit]")]);
  const both = await page.locator("tr[data-id]").count();
  check(none === 0 && both === 2,
    `a filter by reason leaves out what does not match (${none} for recipient, ${both} for config)`);
  await shot(page, "dead-letters-filtered");
  await page.goto(`${base}/console/dead-letters`);
  const row = page.locator(`tr[data-id="${deadId}"]`);

  // Its page: the failure, the journal, the masked event.
  await row.locator("a").first().click();
  await page.waitForURL(`${base}/console/dead-letters/${deadId}`);
  check(await page.isVisible("#failure"), "the letter's page shows the failure");
  check((await page.textContent(".timeline")).includes("dead_lettered"), "and its journal");
  check(!/\+?7916\d{7}/.test(await page.content()), "no phone in clear on the letter's page");
  await shot(page, "dead-letter");

  // A state-changing request without the CSRF token is refused, and one
  // with a made-up token too; the letter stays.
  const noCsrf = await page.request.post(`${base}/console/dead-letters/action`, {
    form: { action: "replay-selected", id: deadId },
    maxRedirects: 0,
  });
  check(noCsrf.status() === 403, `a replay without the CSRF token is refused (${noCsrf.status()})`);
  const badCsrf = await page.request.post(`${base}/console/dead-letters/action`, {
    form: { action: "replay-selected", id: deadId, csrf: "0".repeat(64) },
    maxRedirects: 0,
  });
  check(badCsrf.status() === 403, `a replay with a wrong CSRF token is refused (${badCsrf.status()})`);

  // Replay it from the list: select it, press the button, watch the job.
  await page.goto(`${base}/console/dead-letters`);
  await page.check(`tr[data-id="${deadId}"] input[type=checkbox]`);
  await Promise.all([
    page.waitForURL(/\/console\/jobs\//),
    page.click("button[value=replay-selected]"),
  ]);
  await page.waitForSelector('#job-state[data-state="done"]', { timeout: 30000 });
  check((await page.textContent("#replayed")).trim() === "1", "the replay replayed one letter");
  await shot(page, "replay");

  await page.goto(`${base}/console/dead-letters`);
  check((await page.locator(`tr[data-id="${deadId}"]`).count()) === 0, "the letter left the DLQ");

  // The other letter is purged, but only after the page that asks.
  await page.check(`tr[data-id="${otherId}"] input[type=checkbox]`);
  await Promise.all([
    page.waitForURL(/\/console\/dead-letters\/action/),
    page.click("button[value=purge-selected]"),
  ]);
  const asked = await page.textContent("#confirm-text");
  check(asked.includes("Purge 1 dead letter") && asked.includes("for good"), `the purge asks first (${asked.trim()})`);
  await shot(page, "purge-confirm");
  await page.click('button:has-text("Purge for good")');
  await page.waitForSelector("#purged");
  check((await page.textContent("#purged")).includes("Purged 1 dead letter"), "the other letter is purged");
  await page.goto(`${base}/console/dead-letters`);
  check((await page.locator("tr[data-id]").count()) === 0, "the DLQ is empty");

  // The event's journal as a timeline, by its id.
  await page.goto(`${base}/console/events?q=${deadId}`);
  await page.waitForSelector(`section.event[data-id="${deadId}"]`);
  // The replayed event is journaled when the dispatcher sends it: wait for it.
  let sent = false;
  for (let i = 0; i < 50 && !sent; i++) {
    await page.goto(`${base}/console/events?q=${deadId}`);
    sent = (await page.textContent(`section.event[data-id="${deadId}"] h2`)).includes("sent");
    if (!sent) await page.waitForTimeout(200);
  }
  check(sent, "the event's journal shows it sent after the replay");
  await shot(page, "events");

  // Tenants: channels and accounts, no secret.
  await page.goto(`${base}/console/tenants`);
  check(await page.isVisible('section.tenant[data-tenant="acme"]'), "the tenants page lists the tenant");
  const html = await page.content();
  check(!html.includes("EAA-e2e-token") && !html.includes("e2e-api-id"), "no provider secret on the tenants page");
  const rkeeper = page.locator('section.tenant[data-tenant="acme"] tr[data-source="rkeeper"]');
  const rkeeperText = await rkeeper.textContent();
  const rkeeperCount = parseInt(await rkeeper.locator("td.num").textContent(), 10);
  check(rkeeperText.includes("Выполнен") && rkeeperCount > 0,
    `the tenants page lists its sources, what counts and what came (${rkeeperText.trim()})`);
  await shot(page, "tenants");

  // Pause the number by hand (before rotating its token, say), see it on
  // the overview, and resume it.
  const account = page.locator('tr[data-account="acme|meta|1234567890"]');
  await Promise.all([page.waitForURL(`${base}/console/tenants`), account.locator("button[value=pause]").click()]);
  check((await account.textContent()).includes("paused: by an admin"), "the account is paused from the tenants page");
  await page.goto(`${base}/console`);
  const pausedRow = await page.textContent("#pauses");
  check(pausedRow.includes("1234567890") && pausedRow.includes("paused by an admin"), "the overview lists the paused account");
  await shot(page, "overview-paused");
  await page.goto(`${base}/console/tenants`);
  await Promise.all([page.waitForURL(`${base}/console/tenants`), account.locator("button[value=resume]").click()]);
  check((await account.textContent()).includes("healthy"), "and resumed");

  // Back to the overview, now with a delivery counted.
  await page.goto(`${base}/console`);
  await shot(page, "overview");

  // Signing out ends the session: the cookie no longer opens a page.
  await page.click("form.signout button");
  await page.waitForURL(`${base}/console/sign-in`);
  const after = await context.request.get(`${base}/console`, { maxRedirects: 0 });
  check(after.status() === 303, `after sign-out the console asks to sign in again (${after.status()})`);
  const replayed = await page.request.post(`${base}/console/dead-letters/action`, {
    headers: { cookie: `vestnik_console=${session.value}` },
    form: { action: "replay-filter" },
    maxRedirects: 0,
  });
  check(replayed.status() === 303 && replayed.headers()["location"] === "/console/sign-in",
    "the old session id opens nothing after sign-out");
} catch (e) {
  failed = true;
  console.error(e.stack || String(e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
