/* The form of a file serving (image and audio renderers): the upload widget,
 * the serving's options, and Submit, which uploads the file (once; a second
 * submit with other options reuses the upload) and then submits the job
 * {"serving", "input": {"file": <upload id>, ...options}}.
 */
import { jobForm } from "./job-form.js";
import { UploadWidget } from "./upload.js";

export function mountFileForm(container, context) {
  const widget = new UploadWidget({ serving: context.serving, spec: context.spec, url: context.api.uploads });
  const form = jobForm(container, context, {
    fields: [widget.element],
    input: async (options, say) => {
      say("Uploading…");
      const upload = await widget.upload();
      return upload ? { file: upload.id, ...options } : null;
    },
    ready: () => widget.file !== null,
    submitText: "Submit",
  });
  widget.onChange(form.refresh);
  return widget;
}
