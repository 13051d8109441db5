/* The form every generic renderer shares: its own input fields, the serving's
 * options (options.js), and "Submit as job" (POST /api/jobs; the job then
 * shows in the jobs list and updates live):
 *
 *   jobForm(container, context, {
 *     fields: [textarea],                                   // the input's own fields
 *     input: async (options, say) => ({text: textarea.value, ...options}),
 *     ready: () => textarea.value.trim() !== "",            // enables the button
 *   });
 *
 * `input` builds the job's input from the typed option values; it may report
 * its steps with `say(text)`, and returns null when it cannot (having said why
 * in place). jobForm returns {form, refresh}: call refresh when `ready` may
 * have changed other than by typing in the form.
 */
import { h } from "./dom.js";
import { postJson } from "./http.js";
import { optionsForm } from "./options.js";

export function jobForm(container, { serving, spec, jobs, banner, api }, { fields, input, ready, submitText }) {
  const options = optionsForm(spec.options);
  const submit = h("button", { type: "submit", class: "button primary", "data-testid": "submit-job", text: submitText || "Submit as job" });
  const status = h("span", { class: "save-status", role: "status", "data-testid": "submit-status" });
  const form = h("form", { class: "job-form", novalidate: true, "data-testid": "job-form" }, [
    ...fields,
    options.element,
    h("div", { class: "actions" }, [submit, status]),
  ]);
  container.replaceChildren(form);
  let busy = false;

  function refresh() {
    submit.disabled = busy || !ready();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy || !ready() || !options.valid()) return;
    busy = true;
    refresh();
    status.textContent = "Submitting…";
    try {
      const value = await input(options.values(), (text) => {
        status.textContent = text;
      });
      if (value === null) {
        status.textContent = "Not submitted.";
        return;
      }
      status.textContent = "Submitting…";
      const answer = await postJson(api.jobs, { serving, input: value });
      if (answer.ok && answer.body.id) {
        jobs.upsert(answer.body);
        banner.clear("save");
        status.textContent = "Submitted. It runs in the background and shows below.";
      } else {
        banner.show(answer.error.code, answer.error.message, "save");
        status.textContent = "Not submitted.";
      }
    } finally {
      busy = false;
      refresh();
    }
  });
  form.addEventListener("input", refresh);
  refresh();
  return { refresh, form };
}
