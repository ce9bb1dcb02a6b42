// The console's entry point: the API key, the workflow form, submitting, and wiring the views.

import { ApiError, apiKey, getJson, request, setApiKey } from "./api.js";
import { readParams, renderParams } from "./form.js";
import { NodesView } from "./nodes.js";
import { TaskList } from "./tasks.js";

const DEFAULT_WORKFLOW = "txt2img";
const $ = (id) => document.getElementById(id);
let workflows = [];
let keysOn = false;

function banner(text) {
  $("banner").textContent = text;
  $("banner").hidden = !text;
}

function needKey(message) {
  keysOn = true;
  $("key-form").hidden = false;
  $("service-note").textContent = "";
  banner(message);
  $("api-key").focus();
}

function onAuthError() {
  needKey(apiKey() ? "The service refused this key: enter another." : "This service needs an API key.");
}

function onError(exc) {
  if (exc instanceof ApiError && exc.status === 401) onAuthError();
  else banner(`The service did not answer as expected: ${exc.message}`);
}

function showWorkflow() {
  const workflow = workflows.find((w) => w.name === $("workflow").value);
  if (!workflow) return;
  $("workflow-description").textContent = workflow.description;
  renderParams($("params"), workflow.params);
  showErrors([]);
}

async function loadWorkflows() {
  try {
    workflows = (await getJson("workflows")).workflows;
  } catch (exc) {
    onError(exc);
    return false;
  }
  banner("");
  $("key-form").hidden = !(keysOn || apiKey());
  $("service-note").textContent = apiKey() ? "using the key given in this tab" : "";
  const select = $("workflow");
  const chosen = select.value || DEFAULT_WORKFLOW;
  select.replaceChildren(...workflows.map((w) => new Option(w.name, w.name)));
  select.value = workflows.some((w) => w.name === chosen) ? chosen : workflows[0]?.name ?? "";
  showWorkflow();
  return true;
}

function showErrors(lines) {
  const list = $("form-errors");
  list.replaceChildren(...lines.map((line) => Object.assign(document.createElement("li"),
                                                            { textContent: line })));
  list.hidden = !lines.length;
}

function errorLines(exc) {
  const fields = exc instanceof ApiError && exc.details && exc.details.fields;
  if (Array.isArray(fields) && fields.length) return fields.map((f) => `${f.field}: ${f.message}`);
  return [exc instanceof ApiError ? `${exc.code}: ${exc.message}` : String(exc)];
}

function summaryOf(params) {
  const text = params.prompt || (params.scenes && params.scenes[0] && params.scenes[0].text) || "";
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

async function submit(tasks) {
  const button = $("submit-task");
  button.disabled = true;
  showErrors([]);
  try {
    const workflow = $("workflow").value;
    const { params, files } = readParams($("params"));
    for (const [name, file] of files) { // an image parameter: upload it, then name its ref
      const response = await request("uploads", { method: "POST", body: file,
        headers: { "Content-Type": file.type || "application/octet-stream" } });
      params[name] = (await response.json()).ref;
    }
    const answer = await (await request("generate", { method: "POST",
                                                      body: { workflow, params } })).json();
    tasks.add({ task_id: answer.task_id, workflow, status: answer.status,
                created_at: answer.created_at, summary: summaryOf(params) });
  } catch (exc) {
    showErrors(errorLines(exc));
    if (exc instanceof ApiError && exc.status === 401) onAuthError();
  } finally {
    button.disabled = false;
  }
}

function main() {
  const tasks = new TaskList({ list: $("tasks"), empty: $("tasks-empty"), gallery: $("gallery"),
                               onAuthError });
  const nodes = new NodesView($("nodes"), onError);
  const boot = async () => {
    if (await loadWorkflows()) {
      tasks.resume();
      nodes.start();
    }
  };
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey($("api-key").value.trim());
    $("api-key").value = "";
    boot();
  });
  $("key-forget").addEventListener("click", () => {
    setApiKey("");
    boot();
  });
  $("workflow").addEventListener("change", showWorkflow);
  $("task-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submit(tasks);
  });
  tasks.drawAll();
  boot();
}

main();
