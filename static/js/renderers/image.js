/* Any image serving: the drag-and-drop upload widget, the serving's options, Submit. */
import { mountFileForm } from "../file-form.js";

export function mount(container, context) {
  mountFileForm(container, context);
}
