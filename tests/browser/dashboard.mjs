// Loads the dashboard in Debian's Chromium (headless, through playwright-core) and checks what a
// reader relies on. Run by tests/it/browser.rs:
//   node tests/browser/dashboard.mjs <admin base URL> <screenshot path> <admin token>
// Exits 0 and prints a JSON report when every check passes; otherwise prints why and exits 1.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";

const [base, screenshot, token] = process.argv.slice(2);
if (!base || !screenshot || !token) {
  console.error("usage: dashboard.mjs <base URL> <screenshot path> <admin token>");
  process.exit(2);
}
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // As the machine notes say: no sandbox as root, no background traffic to Google's hosts.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const report = {};
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const requests = [];
  const problems = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("response", (r) => { if (r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`); });

  const response = await page.goto(base + "/?since=7d", { waitUntil: "networkidle" });
  check(response.status() === 200, `GET / answered ${response.status()}`);
  const csp = response.headers()["content-security-policy"] || "";
  check(csp.includes("default-src 'none'") && csp.includes("connect-src 'self'"), `CSP: ${csp}`);

  // The figures shown are the API's.
  const api = await (await page.request.get(base + "/api/analytics/summary?since=7d")).json();
  const shown = await page.$$eval("[data-figure]", (nodes) =>
    Object.fromEntries(nodes.map((n) => [n.dataset.figure, n.firstChild.textContent.trim()])));
  const c = api.current;
  const expected = {
    jobs: String(c.jobs),
    hits: String(c.hits),
    misses: String(c.misses),
    hit_ratio_pct: `${c.hit_ratio_pct.toFixed(2)} %`,
    spend_usd: `$${c.spend_usd.toFixed(4)}`,
    saved_usd: `$${c.saved_usd.toFixed(4)}`,
    failures: String(c.failures),
  };
  for (const [figure, value] of Object.entries(expected)) {
    check(shown[figure] === value, `${figure}: page shows ${shown[figure]}, API says ${value}`);
  }
  report.figures = shown;

  // Charts render: every chart is an SVG with drawn marks and a size on screen.
  const charts = await page.$$eval("svg.chart", (svgs) => svgs.map((s) => {
    const box = s.getBoundingClientRect();
    return { id: s.id, marks: s.querySelectorAll("path.series, rect.bar").length,
             width: box.width, height: box.height };
  }));
  report.charts = charts;
  check(charts.length >= 4 + 9, `only ${charts.length} charts`);
  for (const id of ["chart-hit-ratio", "chart-spend", "chart-outcomes", "chart-latency", "chart-by-hair"]) {
    const chart = charts.find((x) => x.id === id);
    check(chart && chart.marks > 0 && chart.width > 100 && chart.height > 50,
          `${id} is empty or invisible: ${JSON.stringify(chart)}`);
  }

  // The Experiments section (when experiments exist): each arm's figures and each verdict are
  // the API's, and its interval charts are drawn.
  const listing = await (await page.request.get(base + "/api/experiments?since=7d")).json();
  report.experiments = [];
  check((await page.$("#experiments")) !== null || listing.experiments.length === 0,
        "experiments exist but the page has no Experiments section");
  for (const e of listing.experiments) {
    const rows = await page.$$eval(`#experiment-${e.experiment}-arms tr[data-arm]`, (trs) => trs.map((tr) => ({
      arm: tr.dataset.arm,
      figures: Object.fromEntries([...tr.querySelectorAll("[data-arm-figure]")]
        .map((td) => [td.dataset.armFigure, td.textContent.trim()])),
    })));
    check(rows.length === e.arms.length, `${e.experiment}: ${rows.length} arms shown, API has ${e.arms.length}`);
    for (const a of e.arms) {
      const row = rows.find((r) => r.arm === a.arm);
      const want = { jobs: String(a.jobs), misses: String(a.misses), hit_ratio_pct: `${a.hit_ratio_pct.toFixed(2)} %`,
                     spend_usd: `$${a.spend_usd.toFixed(4)}` };
      for (const [figure, value] of Object.entries(want)) {
        check(row && row.figures[figure] === value,
              `${e.experiment}/${a.arm} ${figure}: page shows ${row && row.figures[figure]}, API says ${value}`);
      }
    }
    for (const c of e.comparisons) {
      const shown = await page.$eval(`#experiment-${e.experiment} [data-verdict="${c.arm}"]`, (li) => li.textContent)
        .catch(() => "");
      check(shown.includes(c.verdict), `${e.experiment}/${c.arm}: verdict "${c.verdict}" not shown: ${shown}`);
    }
    for (const kind of ["hit-ratio", "hit-difference"]) {
      const chart = charts.find((x) => x.id === `chart-exp-${e.experiment}-${kind}`);
      check(chart && chart.marks > 0 && chart.width > 100 && chart.height > 30,
            `chart-exp-${e.experiment}-${kind} is empty or invisible: ${JSON.stringify(chart)}`);
    }
    report.experiments.push({ name: e.experiment, arms: rows });
  }

  // The top configuration's thumbnail loaded from this server.
  const thumbs = await page.$$eval("#top-uses img.thumb", (imgs) =>
    imgs.map((i) => ({ src: i.src, loaded: i.complete && i.naturalWidth > 0 })));
  report.thumbnails = thumbs.length;
  check(thumbs.length > 0 && thumbs.every((t) => t.loaded), `thumbnails: ${JSON.stringify(thumbs)}`);

  // The warming history renders, in words: the API's runs and spend.
  const warming = await (await page.request.get(base + "/api/analytics/warming?since=7d")).json();
  const warmRows = await page.$$eval("#warming-history tr", (rows) => rows.length - 1);
  check(warmRows === Math.min(10, warming.runs), `warming history shows ${warmRows} runs, API says ${warming.runs}`);
  const warmSpent = await page.$eval("[data-figure=warming_spent_usd]", (n) => n.textContent.trim());
  check(warmSpent.startsWith(`$${warming.spent_usd.toFixed(4)}`), `warming spend shows ${warmSpent}, API says ${warming.spent_usd}`);
  report.warming_runs = warmRows;

  // An action with the token: the top users appear.
  await page.fill("#token", token);
  await page.click("#show-users");
  await page.waitForSelector("#users-table", { timeout: 10000 });
  const users = await page.$$eval("#users-table tr", (rows) => rows.length - 1);
  check(users > 0, "no top users after entering the token");
  await page.click("#cleanup-dry");
  await page.waitForFunction(() => document.getElementById("action-output").textContent.includes("dry_run"),
                             null, { timeout: 10000 });

  await mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });

  // On a phone: nothing wider than the screen.
  await page.setViewportSize({ width: 375, height: 740 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `the page is ${overflow}px wider than a 375px screen`);
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-phone.png"), fullPage: true });

  // No request left the admin server.
  const outside = requests.filter((u) => !u.startsWith(base + "/"));
  report.requests = requests.length;
  check(outside.length === 0, `requests outside the admin server: ${outside.join(", ")}`);
  check(problems.length === 0, `console errors: ${problems.join(" | ")}`);
} finally {
  await browser.close();
}
if (failures.length > 0) {
  console.error("dashboard checks failed:\n- " + failures.join("\n- "));
  process.exit(1);
}
console.log(JSON.stringify(report));
