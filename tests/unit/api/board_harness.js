// Just enough of a browser for board.html's script: the DOM calls it makes, timers run
// by hand, and a fetch that fails FAILURES times before the gateway answers with the
// open alerts in ALERTS_JSON (a file of the list's "alerts"; none if not given).
// node board_harness.js BOARD_HTML FAILURES [ALERTS_JSON]
//   ->  {"calls": [...], "status": "...", "rows": [{"alert_id", "buttons", "action"}],
//        "summary": "..."}
"use strict";
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const script = html.slice(html.indexOf("<script>") + 8, html.lastIndexOf("</script>"));
const FAILURES = Number(process.argv[3]);
// The list's "alerts" alone, or the whole answer (with its "total").
const GIVEN = process.argv[4] ? JSON.parse(fs.readFileSync(process.argv[4], "utf8")) : [];
const ANSWER = Array.isArray(GIVEN) ? {version: 1, alerts: GIVEN} : GIVEN;
process.on("unhandledRejection", () => {});
function element(id) {
  return {id, hidden: false, textContent: "", dataset: {}, children: [], className: "",
    value: "", style: {},
    append(...c) { this.children.push(...c); }, replaceChildren() { this.children = []; },
    get lastChild() { return this.children[this.children.length - 1]; },
    // The same element for the same selector: the table's body keeps its rows.
    found: {},
    querySelector(s) { return (this.found[s] = this.found[s] || element(s)); },
    querySelectorAll() { return []; },
    addEventListener() {}, setAttribute() {}, focus() {}, closest() { return null; },
    matches() { return false; }};
}
const elements = {};
global.document = {
  getElementById: (id) => (elements[id] = elements[id] || element(id)),
  createElement: (t) => element(t), querySelectorAll: () => [], activeElement: null,
};
global.location = {hash: "", pathname: "/board"};
global.history = {replaceState() {}};
const store = {"gateway-token": "operator-token"};
global.sessionStorage = {getItem: (k) => store[k] || null, setItem: (k, v) => { store[k] = v; }};
global.CSS = {escape: (s) => s};
let timers = [];
global.setTimeout = (f) => { timers.push(f); return 1; };
global.clearTimeout = () => {};
global.setInterval = () => 1;
const calls = [];
global.fetch = async (url) => {
  calls.push(url);
  if (calls.length <= FAILURES) throw new TypeError("Failed to fetch");
  if (String(url).includes("alerts-stream")) {
    // A stream that says the alerts' version at once, as the gateway's does, then stays
    // open and quiet. Its reads do not heed the page's abort: the page's timers run here
    // at once, with no time passing, and its watchdog would end every stream.
    const unread = ["event: alerts\ndata: 1\n\n"];
    const read = () => (unread.length ? Promise.resolve({value: unread.shift(), done: false})
      : new Promise(() => {}));
    return {ok: true, status: 200, headers: {get: () => null},
      body: {pipeThrough: () => ({getReader: () => ({read})})}};
  }
  return {ok: true, status: 200, json: async () => ANSWER};
};
global.TextDecoderStream = function () {};
eval(script);
(async () => {
  // A minute or two of the page's life: every timer it set, run in turn.
  for (let round = 0; round < 40; round++) {
    await new Promise((r) => setImmediate(r));
    const due = timers; timers = [];
    for (const f of due) f();
  }
  // Each row as shown: its last cell's buttons, or the text in their place.
  const rows = document.getElementById("alerts").querySelector("tbody").children.map((tr) => {
    const act = tr.children[tr.children.length - 1];
    return {alert_id: tr.dataset.alertId, buttons: act.children.map((b) => b.textContent),
      action: act.textContent};
  });
  console.log(JSON.stringify({calls, status: document.getElementById("status").textContent, rows,
    summary: document.getElementById("summary").textContent}));
})();
