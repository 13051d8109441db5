/* Any JSON serving: a JSON box (options, if any, are merged into an object input), Submit as job. */
import { h, setMessage } from "../dom.js";
import { jobForm } from "../job-form.js";

export function mount(container, context) {
  const hasOptions = Object.keys((context.spec.options || {}).properties || {}).length > 0;
  const text = h("textarea", {
    id: "json-input",
    name: "input",
    class: "mono",
    "data-testid": "json-input",
    rows: hasOptions ? "3" : "6",
    placeholder: hasOptions ? "{}  (optional: the options below are sent as the input)" : '{"key": "value"}',
    spellcheck: "false",
    autocomplete: "off",
    "aria-describedby": "json-error",
  });
  const error = h("p", { id: "json-error", class: "field-error", "data-testid": "json-error", role: "alert", hidden: true });
  const fail = (message) => {
    setMessage(error, message);
    error.hidden = false;
    text.setAttribute("aria-invalid", "true");
    return null;
  };
  text.addEventListener("input", () => {
    error.hidden = true;
    text.removeAttribute("aria-invalid");
  });
  jobForm(container, context, {
    fields: [h("div", { class: "field-head" }, [h("label", { for: "json-input", text: "Input (JSON)" })]), text, error],
    input: async (options) => {
      let value = hasOptions ? {} : null;
      if (text.value.trim()) {
        try {
          value = JSON.parse(text.value);
        } catch (err) {
          return fail(`The input is not valid JSON (${err.message}).`);
        }
      }
      if (!hasOptions) return value;
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        return fail("With options, the input must be a JSON object, e.g. `{}`.");
      }
      return { ...value, ...options };
    },
    ready: () => hasOptions || text.value.trim() !== "",
  });
}
