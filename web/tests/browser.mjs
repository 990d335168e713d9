// The page in a real browser (Debian's Chromium, driven by playwright-core)
// against a running stack. Started by tests/e2e/tests/browser.rs, which runs
// every service on ephemeral ports and passes:
//   PAGE_URL        the page through the gateway, e.g. http://127.0.0.1:4321/app/
//   ACCESS_TTL      access token lifetime the auth service was given, seconds
//   CHROMIUM        the browser executable (default /usr/bin/chromium)
//   SCREENSHOT      where to save a screenshot of the main screen (optional)
// Exits 0 when every check holds; otherwise prints the failed check and 1.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const pageUrl = process.env.PAGE_URL;
const accessTtl = Number(process.env.ACCESS_TTL ?? "0");
assert.ok(pageUrl, "PAGE_URL is required");
assert.ok(accessTtl > 0, "ACCESS_TTL is required");

const run = Date.now().toString(36);
const password = "correct horse battery";
const step = (text) => console.log(`browser: ${text}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
  // Playwright turns the back/forward cache off by default; users have it
  // on, and it is what could bring a signed-in page back after sign-out.
  ignoreDefaultArgs: ["--disable-back-forward-cache"],
});

/** A fresh browser profile: its own storage, like another person's browser. */
async function person(viewport = { width: 1100, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const calls = [];
  page.on("response", (r) => {
    const path = new URL(r.url()).pathname;
    if (path.startsWith("/api/")) calls.push(`${r.request().method()} ${path} ${r.status()}`);
  });
  page.on("pageerror", (e) => {
    throw new Error(`script error on the page: ${e.message}`);
  });
  await page.goto(pageUrl);
  return { context, page, calls };
}

const messages = (page) => page.getByTestId("messages");
const taskList = (page) => page.getByTestId("task-list");

async function register(page, email) {
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Register" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
}

async function addTask(page, title) {
  await page.getByLabel("New task").fill(title);
  await page.getByRole("button", { name: "Add task" }).click();
  await taskList(page).getByText(title, { exact: true }).waitFor();
}

async function taskTitles(page) {
  await page.getByRole("heading", { name: "Tasks" }).waitFor();
  if ((await taskList(page).count()) === 0) return [];
  return (await taskList(page).locator(".task-title").allInnerTexts()).map((t) => t.trim());
}

try {
  // --- Two people, two browsers: each sees only their own tasks. ---
  const alice = await person();
  const bob = await person();
  const aliceEmail = `alice-${run}@example.com`;
  step("alice registers with the keyboard only");
  await alice.page.getByLabel("Email").focus();
  await alice.page.keyboard.type(aliceEmail);
  await alice.page.keyboard.press("Tab");
  await alice.page.keyboard.type(password);
  await alice.page.keyboard.press("Tab"); // Sign in
  await alice.page.keyboard.press("Tab"); // Register
  await alice.page.keyboard.press("Enter");
  await alice.page.getByRole("button", { name: "Sign out" }).waitFor();
  await alice.page.getByText(aliceEmail).first().waitFor();

  step("bob registers");
  await register(bob.page, `bob-${run}@example.com`);

  step("both add tasks");
  await addTask(alice.page, "alice: buy milk");
  await addTask(alice.page, "alice: water plants");
  await addTask(bob.page, "bob: fix bike");

  step("alice completes, renames and deletes tasks");
  // The box is ticked when the server has stored the change, not on click.
  await alice.page.getByRole("checkbox", { name: "alice: buy milk" }).click();
  await alice.page.locator("input[type=checkbox]:checked").first().waitFor();
  await alice.page.getByRole("button", { name: "Edit “alice: water plants”", exact: true }).click();
  await alice.page.getByLabel("Task title").fill("alice: water the plants");
  await alice.page.getByLabel("Task title").press("Enter");
  await taskList(alice.page).getByText("alice: water the plants", { exact: true }).waitFor();
  await addTask(alice.page, "alice: to delete");
  await alice.page.getByRole("button", { name: "Delete “alice: to delete”", exact: true }).click();
  await taskList(alice.page).getByText("alice: to delete", { exact: true }).waitFor({ state: "detached" });

  step("after a reload, each sees exactly their own tasks");
  await alice.page.reload();
  await bob.page.reload();
  await taskList(alice.page).getByText("alice: water the plants", { exact: true }).waitFor();
  await taskList(bob.page).getByText("bob: fix bike", { exact: true }).waitFor();
  assert.deepEqual((await taskTitles(alice.page)).sort(), ["alice: buy milk", "alice: water the plants"]);
  assert.deepEqual(await taskTitles(bob.page), ["bob: fix bike"]);
  assert.equal(
    await alice.page.getByRole("checkbox", { name: "alice: buy milk" }).isChecked(),
    true,
    "completion was not kept",
  );

  // --- Live updates: a change made on one device shows on another. ---
  step("alice signs in on a second device; changes show up live");
  const aliceElsewhere = await person();
  await aliceElsewhere.page.getByLabel("Email").fill(aliceEmail);
  await aliceElsewhere.page.getByLabel("Password").fill(password);
  await aliceElsewhere.page.getByRole("button", { name: "Sign in" }).click();
  await taskList(aliceElsewhere.page).getByText("alice: buy milk", { exact: true }).waitFor();
  for (const page of [alice.page, aliceElsewhere.page, bob.page]) {
    await page.getByTestId("live-status").getByText("Live updates on").waitFor();
  }
  await addTask(alice.page, "alice: added on the laptop");
  await taskList(aliceElsewhere.page).getByText("alice: added on the laptop", { exact: true }).waitFor();
  await aliceElsewhere.page.getByRole("button", { name: "Delete “alice: added on the laptop”", exact: true }).click();
  await taskList(alice.page)
    .getByText("alice: added on the laptop", { exact: true })
    .waitFor({ state: "detached" });
  assert.ok(
    !(await taskTitles(bob.page)).some((t) => t.startsWith("alice")),
    "alice's task appeared on bob's page",
  );
  await aliceElsewhere.context.close();

  // --- Stock and orders, with the clear messages for 409 and 422. ---
  step("alice places an order and stock goes down");
  const stockRow = (page, sku) => page.getByTestId("stock-table").locator("tr", { hasText: sku });
  const firstSku = (await alice.page.getByTestId("stock-table").locator("tbody tr code").first().innerText()).trim();
  const before = Number((await stockRow(alice.page, firstSku).locator("td").last().innerText()).trim());
  await alice.page.getByLabel("Item").selectOption(firstSku);
  await alice.page.getByLabel("Quantity").fill("2");
  await alice.page.getByRole("button", { name: "Place order" }).click();
  await alice.page.getByTestId("order-list").getByText("placed").first().waitFor();
  await alice.page.waitForFunction(
    ([sku, expected]) => {
      const row = [...document.querySelectorAll('[data-testid="stock-table"] tbody tr')].find((r) =>
        r.textContent.includes(sku),
      );
      return row && Number(row.lastElementChild.textContent.trim()) === expected;
    },
    [firstSku, before - 2],
  );

  step("an order larger than the stock is refused with a sentence, not JSON");
  await alice.page.getByLabel("Quantity").fill(String(before + 100));
  await alice.page.getByRole("button", { name: "Place order" }).click();
  await messages(alice.page).getByText(/not enough stock/i).waitFor();
  assert.ok(!(await messages(alice.page).innerText()).includes("{"), "raw JSON in the messages");

  step("alice cancels the order and the stock comes back");
  await alice.page.getByTestId("order-list").getByRole("button", { name: "Cancel" }).first().click();
  await alice.page.getByTestId("order-list").getByText("cancelled").first().waitFor();
  await alice.page.waitForFunction(
    ([sku, expected]) => {
      const row = [...document.querySelectorAll('[data-testid="stock-table"] tbody tr')].find((r) =>
        r.textContent.includes(sku),
      );
      return row && Number(row.lastElementChild.textContent.trim()) === expected;
    },
    [firstSku, before],
  );

  if (process.env.SCREENSHOT) {
    await alice.page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    step(`screenshot saved to ${process.env.SCREENSHOT}`);
  }

  // --- The access token expires; the next action still succeeds. ---
  // The live socket is closed as its token expires and asks for a fresh one,
  // so the page refreshes on its own; either way, one refresh per expiry,
  // never a refused one, and the user stays signed in.
  step(`waiting ${accessTtl + 1} s for alice's access token to expire`);
  alice.calls.length = 0;
  await alice.page.waitForTimeout((accessTtl + 1) * 1000);
  await addTask(alice.page, "alice: after expiry");
  await alice.page.getByTestId("live-status").getByText("Live updates on").waitFor();
  const sequence = alice.calls.join("\n");
  const refreshes = sequence.match(/POST \/api\/auth\/refresh \d+/g) ?? [];
  assert.ok(refreshes.length >= 1, `no refresh:\n${sequence}`);
  assert.ok(
    refreshes.every((r) => r.endsWith(" 200")),
    `a refresh was refused:\n${sequence}`,
  );
  assert.ok(refreshes.length <= 3, `refreshing in a loop:\n${sequence}`);
  assert.match(sequence, /POST \/api\/tasks 201/, `the task was not added:\n${sequence}`);

  // --- Sign out, then Back: nothing private anywhere. ---
  step("alice signs out; Back shows nothing private");
  // A second page load leaves the signed-in page behind in the history, so
  // that Back after signing out has a private page to go back to.
  await alice.page.goto(`${pageUrl}?again`);
  await taskList(alice.page).getByText("alice: after expiry", { exact: true }).waitFor();
  await alice.page.getByRole("button", { name: "Sign out" }).click();
  await alice.page.getByRole("button", { name: "Sign in" }).waitFor();
  await alice.page.goBack();
  assert.ok(!alice.page.url().includes("?again"), "Back did not leave the page");
  await alice.page.getByRole("button", { name: "Sign in" }).waitFor();
  const afterBack = await alice.page.content();
  for (const secret of ["alice: buy milk", "water the plants", aliceEmail, "task-list", "order-list"]) {
    assert.ok(!afterBack.includes(secret), `"${secret}" is still on the page after sign-out and Back`);
  }
  const stored = await alice.page.evaluate(() => JSON.stringify(localStorage));
  assert.equal(stored, "{}", `localStorage still holds ${stored}`);
  await alice.page.goto(pageUrl);
  await alice.page.getByRole("button", { name: "Sign in" }).waitFor();
  assert.ok(!(await alice.page.content()).includes("alice: buy milk"), "a fresh load shows private data");

  step("a wrong password is a sentence in the message area");
  await alice.page.getByLabel("Email").fill(aliceEmail);
  await alice.page.getByLabel("Password").fill("not the password");
  await alice.page.getByRole("button", { name: "Sign in" }).click();
  await messages(alice.page).getByText(/wrong email or password/i).waitFor();

  step("signing in again shows alice's tasks, still none of bob's");
  await alice.page.getByLabel("Password").fill(password);
  await alice.page.getByRole("button", { name: "Sign in" }).click();
  await taskList(alice.page).getByText("alice: after expiry", { exact: true }).waitFor();
  assert.ok(!(await taskTitles(alice.page)).some((t) => t.startsWith("bob")), "bob's task in alice's list");

  // --- Phone width: usable, no sideways scrolling. ---
  step("at phone width the page does not scroll sideways");
  const phone = await person({ width: 360, height: 740 });
  await register(phone.page, `carol-${run}@example.com`);
  await addTask(phone.page, "carol: a task with a rather long title that has to wrap on a small screen");
  await phone.page.getByTestId("stock-table").waitFor();
  const overflow = await phone.page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a 360px screen`);

  await browser.close();
  step("all checks passed");
} catch (error) {
  console.error(`browser: FAILED: ${error.stack ?? error}`);
  await browser.close().catch(() => {});
  process.exit(1);
}
