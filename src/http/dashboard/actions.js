// The dashboard's actions: the only script, served from the binary (CSP script-src 'self').
// The token stays in the field; it is never stored, and only sent to this admin server.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const status = $("action-status");
  const output = $("action-output");

  function token() {
    const value = $("token").value.trim();
    if (!value) {
      status.textContent = "Enter the admin token first.";
      $("token").focus();
    }
    return value;
  }

  async function call(method, path) {
    const value = token();
    if (!value) return null;
    status.textContent = "Working…";
    output.textContent = "";
    try {
      const response = await fetch(path, {
        method,
        headers: { Authorization: "Bearer " + value },
        credentials: "omit",
        cache: "no-store",
      });
      const body = await response.json().catch(() => ({}));
      status.textContent = response.ok
        ? "Done (HTTP " + response.status + ")."
        : "Refused (HTTP " + response.status + "): " + (body.message || body.error || "");
      return response.ok ? body : null;
    } catch (error) {
      status.textContent = "The request failed: " + error;
      return null;
    }
  }

  async function cleanup(dryRun) {
    if (!dryRun && !window.confirm("Run the cleanup now? Entries will be archived and deleted.")) return;
    const body = await call("POST", "/api/cache/cleanup" + (dryRun ? "?dry_run=true" : ""));
    if (body) output.textContent = JSON.stringify(body, null, 2);
  }

  async function users() {
    const body = await call("GET", "/api/analytics/top-users?limit=10");
    const box = $("users");
    box.textContent = "";
    if (!body) return;
    const table = document.createElement("table");
    table.id = "users-table";
    const head = table.insertRow();
    for (const name of ["user id", "jobs", "generations", "spend (USD)", "saved (USD)"]) {
      const th = document.createElement("th");
      th.textContent = name;
      head.appendChild(th);
    }
    for (const user of body.users) {
      const row = table.insertRow();
      for (const value of [user.user_id, user.jobs, user.generations, user.spend_usd.toFixed(4), user.saved_usd.toFixed(4)]) {
        row.insertCell().textContent = String(value);
      }
    }
    box.appendChild(table);
  }

  $("token-form").addEventListener("submit", (event) => event.preventDefault());
  $("cleanup-dry").addEventListener("click", () => cleanup(true));
  $("cleanup-run").addEventListener("click", () => cleanup(false));
  $("show-users").addEventListener("click", users);
})();
