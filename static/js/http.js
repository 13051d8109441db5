/* The HTTP side of the page: JSON and uploads, CSRF header included.
 *
 * Both calls resolve to {ok, status, body, error}: `body` is the parsed JSON
 * answer (or null), `error` is {code, message} when the call failed, taken
 * from the server's {"error": {...}} when it sent one:
 *
 *   const answer = await postJson("/api/jobs", {serving: "sentiment", input: {text}});
 *   if (!answer.ok) banner.show(answer.error.code, answer.error.message);
 */

export function csrfToken() {
  for (const pair of document.cookie ? document.cookie.split(";") : []) {
    const [name, ...rest] = pair.trim().split("=");
    if (name === "csrftoken") return decodeURIComponent(rest.join("="));
  }
  return "";
}

function outcome(status, statusText, body) {
  if (status >= 200 && status < 300 && body) return { ok: true, status, body, error: null };
  let error;
  if (body && body.error && typeof body.error === "object") {
    error = { code: String(body.error.code || "error"), message: String(body.error.message || "") };
  } else if (status === 403) {
    error = { code: "csrf_failed", message: "The server refused the request (403). Reload the page and try again." };
  } else if (status === 0) {
    error = { code: "network_error", message: "Check your connection and try again." };
  } else {
    error = { code: "internal_error", message: `The server answered ${status} ${statusText || ""}`.trim() + "." };
  }
  return { ok: false, status, body, error };
}

function parse(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch (err) {
    return null;
  }
}

/** POST `body` as JSON to `url`. */
export async function postJson(url, body) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body),
    });
  } catch (err) {
    return outcome(0, "", null);
  }
  return outcome(response.status, response.statusText, parse(await response.text()));
}

/** POST `fields` (strings and Files) as multipart/form-data; `onProgress(fraction)` as the body goes out. */
export function postForm(url, fields, onProgress) {
  return new Promise((resolve) => {
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.withCredentials = true;
    if (onProgress) {
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
      });
    }
    xhr.addEventListener("load", () => resolve(outcome(xhr.status, xhr.statusText, parse(xhr.responseText))));
    xhr.addEventListener("error", () => resolve(outcome(0, "", null)));
    xhr.addEventListener("abort", () => resolve(outcome(0, "", null)));
    xhr.send(form);
  });
}
