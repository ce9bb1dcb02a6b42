// Calls to REST API v1 with the key the user gave this tab (sessionStorage, a Bearer header:
// never in a URL, where it would end in access logs and browser history).

const KEY_ITEM = "comfy-service.api-key";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// Relative to the page, so the console also works behind a proxy that adds a path prefix.
export function apiUrl(path) {
  return new URL(`api/v1/${path}`, document.baseURI).toString();
}

export async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not our error body (a proxy's page): fall through
  }
  const error = body && body.error;
  return error
    ? new ApiError(response.status, error.code, error.message, error.details)
    : new ApiError(response.status, "http_error", `HTTP ${response.status}`, null);
}

// A raw response (2xx), or an ApiError.
export async function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: authHeaders(headers), signal, cache: "no-store" };
  if (body !== undefined) {
    if (body instanceof Blob) {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  const response = await fetch(apiUrl(path), init);
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJson(path, options) {
  return (await request(path, options)).json();
}
