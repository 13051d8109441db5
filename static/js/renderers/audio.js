/* Any audio serving: the drag-and-drop upload widget (with an audio preview), the serving's options, Submit. */
import { mountFileForm } from "../file-form.js";

export function mount(container, context) {
  mountFileForm(container, context);
}
