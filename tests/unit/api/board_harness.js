// Just enough of a browser for board.html's script: the DOM calls it makes, timers run
// by hand, and a fetch that fails FAILURES times before the gateway answers.
// node board_harness.js BOARD_HTML FAILURES  ->  {"calls": [...], "status": "..."}
"use strict";
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const script = html.slice(html.indexOf("<script>") + 8, html.lastIndexOf("</script>"));
const FAILURES = Number(process.argv[3]);
process.on("unhandledRejection", () => {});
function element(id) {
  return {id, hidden: false, textContent: "", dataset: {}, children: [], className: "",
    value: "", style: {},
    append(...c) { this.children.push(...c); }, replaceChildren() { this.children = []; },
    querySelector() { return element("q"); }, querySelectorAll() { return []; },
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
global.setInterval = () => 1;
const calls = [];
global.fetch = async (url) => {
  calls.push(url);
  if (calls.length <= FAILURES) throw new TypeError("Failed to fetch");
  if (String(url).includes("alerts-stream")) {
    // A stream that stays open and quiet.
    return {ok: true, status: 200, body: {pipeThrough: () => ({getReader: () => ({
      read: () => new Promise(() => {})})})}};
  }
  return {ok: true, status: 200, json: async () => ({version: 1, alerts: []})};
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
  console.log(JSON.stringify({calls, status: document.getElementById("status").textContent}));
})();
