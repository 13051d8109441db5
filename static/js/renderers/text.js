/* Any text serving: a text box with a character counter, the serving's options, Submit as job. */
import { h } from "../dom.js";
import { jobForm } from "../job-form.js";

const numbers = new Intl.NumberFormat();

export function mount(container, context) {
  const maxChars = Number((context.spec.limits || {}).max_chars) || null;
  const text = h("textarea", {
    id: "text",
    name: "text",
    "data-testid": "text",
    rows: "5",
    maxlength: maxChars ? String(maxChars) : null,
    autocomplete: "off",
    "aria-describedby": "char-count",
  });
  const counter = h("span", { id: "char-count", class: "counter", "data-testid": "char-count" });
  const count = () => {
    const n = text.value.length;
    counter.textContent = maxChars ? `${numbers.format(n)} / ${numbers.format(maxChars)}` : numbers.format(n);
    counter.classList.toggle("at-limit", Boolean(maxChars) && n >= maxChars);
  };
  text.addEventListener("input", count);
  count();
  jobForm(container, context, {
    fields: [h("div", { class: "field-head" }, [h("label", { for: "text", text: "Text" }), counter]), text],
    input: async (options) => ({ text: text.value, ...options }),
    ready: () => text.value.trim() !== "",
  });
}
