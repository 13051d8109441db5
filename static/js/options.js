/* A form for a serving's options, built from the JSON schema in spec.options:
 * boolean -> checkbox, enum -> select, integer/number -> number input with its
 * range, string -> text input; `description` is the help text.
 *
 *   const options = optionsForm(spec.options);
 *   form.append(options.element);             // null when the serving has no options
 *   options.values();                         // {"windows": 3, "flip": false}, typed
 */
import { h, humanise } from "./dom.js";

let formSeq = 0;

function field(name, schema, id) {
  const type = schema.type;
  const help = schema.description ? h("p", { class: "help", id: `${id}-help`, text: schema.description }) : null;
  const described = help ? `${id}-help` : null;
  let input;
  if (type === "boolean") {
    input = h("input", { type: "checkbox", id, name, "aria-describedby": described, "data-option": name });
    input.checked = Boolean(schema.default);
    return h("div", { class: "option option-check" }, [
      h("label", { class: "check", for: id }, [input, h("span", { text: humanise(name) })]),
      help,
    ]);
  }
  if (Array.isArray(schema.enum) && schema.enum.length) {
    input = h("select", { id, name, "aria-describedby": described, "data-option": name },
      schema.enum.map((choice) => h("option", { value: JSON.stringify(choice), text: String(choice) })));
    if (schema.default !== undefined && schema.default !== null) input.value = JSON.stringify(schema.default);
  } else if (type === "integer" || type === "number") {
    input = h("input", {
      type: "number",
      id,
      name,
      step: type === "integer" ? "1" : "any",
      min: schema.minimum,
      max: schema.maximum,
      inputmode: type === "integer" ? "numeric" : "decimal",
      "aria-describedby": described,
      "data-option": name,
    });
    if (schema.default !== undefined && schema.default !== null) input.value = String(schema.default);
  } else {
    input = h("input", { type: "text", id, name, "aria-describedby": described, "data-option": name, autocomplete: "off" });
    if (schema.default !== undefined && schema.default !== null) input.value = String(schema.default);
  }
  return h("div", { class: "option" }, [h("label", { for: id, text: humanise(name) }), input, help]);
}

export function optionsForm(schema) {
  const properties = (schema && schema.properties) || {};
  const names = Object.keys(properties);
  if (!names.length) return { element: null, values: () => ({}), valid: () => true };
  const prefix = `option-${++formSeq}`;
  const element = h("fieldset", { class: "options", "data-testid": "options" }, [
    h("legend", { text: "Options" }),
    h("div", { class: "options-grid" }, names.map((name) => field(name, properties[name], `${prefix}-${name}`))),
  ]);

  function values() {
    const out = {};
    for (const name of names) {
      const schema = properties[name];
      const input = element.querySelector(`[data-option="${CSS.escape(name)}"]`);
      if (schema.type === "boolean") out[name] = input.checked;
      else if (input.tagName === "SELECT") out[name] = JSON.parse(input.value);
      else if (schema.type === "integer" || schema.type === "number") {
        if (input.value.trim() !== "") out[name] = Number(input.value); // empty: the serving's default
      } else out[name] = input.value;
    }
    return out;
  }

  /** Checks the inputs' ranges; shows the browser's own message on the first bad one. */
  function valid() {
    for (const input of element.querySelectorAll("input, select")) {
      if (!input.checkValidity()) {
        input.reportValidity();
        return false;
      }
    }
    return true;
  }

  return { element, values, valid };
}
