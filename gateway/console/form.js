// The task form, generated from GET /api/v1/workflows: one control per typed parameter
// (string, integer, number, enum, image, list of items), read back into `params`.

const LONG_TEXT = 200; // strings that may be longer than this get a textarea

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function scalarControl(id, spec, value) {
  let control;
  if (spec.type === "enum") {
    control = el("select", { id });
    for (const choice of spec.choices) control.append(el("option", { value: choice, text: choice }));
  } else if (spec.type === "image") {
    control = el("input", { id, type: "file", accept: "image/png,image/jpeg,image/webp" });
  } else if (spec.type === "integer" || spec.type === "number") {
    control = el("input", { id, type: "number", min: spec.min, max: spec.max,
                            step: spec.type === "integer" ? spec.multiple_of || 1 : "any" });
  } else if ((spec.max_length || 0) > LONG_TEXT) {
    control = el("textarea", { id, rows: 2, maxlength: spec.max_length });
  } else {
    control = el("input", { id, type: "text", maxlength: spec.max_length, spellcheck: "false" });
  }
  control.dataset.type = spec.type;
  if (spec.ref) control.dataset.ref = spec.ref;
  if (spec.type !== "image" && value !== null && value !== undefined) control.value = String(value);
  if (spec.required) control.required = true;
  return control;
}

function describe(name, spec) {
  const bounds = [];
  if (spec.min !== undefined || spec.max !== undefined) bounds.push(`${spec.min ?? ""}–${spec.max ?? ""}`);
  if (spec.required) bounds.push("required");
  return [spec.description || "", bounds.length ? `(${bounds.join(", ")})` : ""]
    .filter(Boolean).join(" ");
}

function listItemRow(listName, spec, index) {
  const row = el("div", { class: "list-item" });
  for (const [key, itemSpec] of Object.entries(spec.item)) {
    const id = `p-${listName}-${index}-${key}`;
    const control = itemSpec.ref
      ? el("select", { id, "data-type": "string", "data-ref": itemSpec.ref })
      : scalarControl(id, itemSpec, null);
    control.dataset.key = key;
    row.append(el("label", { for: id, text: key }), control);
  }
  const remove = el("button", { type: "button", class: "secondary small", text: "remove" });
  remove.addEventListener("click", () => {
    const items = row.parentElement;
    if (items.children.length > (spec.min_items || 1)) row.remove();
    items.dispatchEvent(new Event("input", { bubbles: true }));
  });
  row.append(remove);
  return row;
}

function listControl(name, spec) {
  const items = el("div", { class: "list-items", id: `p-${name}`, "data-type": "list" });
  let made = 0;
  const add = () => items.append(listItemRow(name, spec, made++));
  for (let i = 0; i < Math.max(1, spec.min_items || 0); i++) add();
  const more = el("button", { type: "button", class: "secondary small", text: `add ${name}` });
  more.addEventListener("click", () => {
    if (!spec.max_items || items.children.length < spec.max_items) add();
    items.dispatchEvent(new Event("input", { bubbles: true }));
  });
  return el("fieldset", { class: "list", "data-param": name },
            el("legend", { text: name }), el("p", { class: "muted", text: describe(name, spec) }),
            items, more);
}

// Draws the controls of one workflow's params into `container`.
export function renderParams(container, params) {
  container.replaceChildren();
  for (const [name, spec] of Object.entries(params)) {
    if (spec.type === "list") {
      container.append(listControl(name, spec));
      continue;
    }
    const id = `p-${name}`;
    const control = scalarControl(id, spec, spec.default);
    control.dataset.param = name;
    container.append(el("div", { class: "field", "data-field": name },
                        el("label", { for: id, text: name }), control,
                        el("small", { class: "muted", text: describe(name, spec) })));
  }
  refreshRefs(container);
  if (!container.dataset.refsFollowed) { // one listener for every workflow drawn here
    container.dataset.refsFollowed = "yes";
    container.addEventListener("input", () => refreshRefs(container));
  }
}

// A list item field with `ref` ("characters.name") offers the names entered in that list.
export function refreshRefs(container) {
  for (const select of container.querySelectorAll("select[data-ref]")) {
    const [list, key] = select.dataset.ref.split(".");
    const names = Array.from(container.querySelectorAll(
      `[data-param="${list}"] [data-key="${key}"]`)).map((input) => input.value.trim())
      .filter(Boolean);
    const current = select.value;
    select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    if (names.includes(current)) select.value = current;
  }
}

function scalarValue(control) {
  const raw = control.value.trim();
  if (raw === "") return undefined;
  if (control.dataset.type === "integer") return Number.parseInt(raw, 10);
  if (control.dataset.type === "number") return Number.parseFloat(raw);
  return control.value;
}

// The params to send, with uploads still to do: {params, files: [[name, File]]}. Empty optional
// fields are left out, so the service's defaults (and random seeds) apply.
export function readParams(container) {
  const params = {};
  const files = [];
  for (const control of container.querySelectorAll("[data-param]")) {
    const name = control.dataset.param;
    if (control.dataset.type === "image") {
      if (control.files && control.files[0]) files.push([name, control.files[0]]);
    } else if (control.tagName === "FIELDSET") {
      const items = [];
      for (const row of control.querySelectorAll(".list-item")) {
        const item = {};
        for (const input of row.querySelectorAll("[data-key]")) {
          const value = scalarValue(input);
          if (value !== undefined) item[input.dataset.key] = value;
        }
        if (Object.keys(item).length) items.push(item);
      }
      params[name] = items;
    } else {
      const value = scalarValue(control);
      if (value !== undefined) params[name] = value;
    }
  }
  return { params, files };
}
