/* Building page nodes safely: every string goes in as text, never as HTML.
 *
 *   h("p", {class: "note", text: job.error})          // <p class="note">…</p>
 *   setMessage(node, "run `make test` first")         // "run ", <code>make test</code>, " first"
 */

/** A new element with attributes (`text` sets textContent, `dataset` and `style` as named) and children. */
export function h(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children || []) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/** Put a message into `node`, showing `backticked` parts as <code>. */
export function setMessage(node, message) {
  node.replaceChildren();
  String(message || "").split("`").forEach((part, i) => {
    if (!part) return;
    node.append(i % 2 ? h("code", { text: part }) : document.createTextNode(part));
  });
}

/** "fail_at" -> "Fail at". */
export function humanise(name) {
  const words = String(name || "").replace(/[_-]+/g, " ").trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

const sizes = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** 1536 -> "1.5 KB". */
export function sizeText(bytes) {
  const n = Number(bytes);
  if (!Number.isFinite(n)) return "";
  if (n < 1000) return `${n} B`;
  if (n < 1e6) return `${sizes.format(n / 1e3)} KB`;
  if (n < 1e9) return `${sizes.format(n / 1e6)} MB`;
  return `${sizes.format(n / 1e9)} GB`;
}

/** A value as short, one-line JSON (strings as they are), cut at `max` characters. */
export function compactJson(value, max = 240) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  if (text === undefined) return "";
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}
