import { useEffect, useId, useRef, useState, type FormEvent, type KeyboardEvent } from "react";
import { api, ApiError, type Task } from "./api";
import { reportFailure, type Notify } from "./messages";
import { useAbortSignal } from "./use-abort-signal";
import type { SubscribeLive } from "./live";

function isTask(value: unknown): value is Task {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as Task).id === "number" &&
    typeof (value as Task).title === "string" &&
    typeof (value as Task).completed === "boolean"
  );
}

/**
 * The signed-in user's tasks: list, add, rename, complete and delete; kept
 * up to date with changes made elsewhere (another tab, another device)
 * through live events.
 */
export function Tasks({ notify, subscribe }: { notify: Notify; subscribe?: SubscribeLive }) {
  const signal = useAbortSignal();
  // null until the first answer, so "loading" and "no tasks" read differently.
  const [tasks, setTasks] = useState<Task[] | null>(null);
  const [loadFailed, setLoadFailed] = useState(false);
  const [title, setTitle] = useState("");
  const [adding, setAdding] = useState(false);
  const headingRef = useRef<HTMLHeadingElement>(null);
  const newTaskId = useId();

  async function load() {
    const s = signal();
    setLoadFailed(false);
    try {
      const list = await api<Task[]>("/api/tasks", { signal: s });
      setTasks(list);
    } catch (error) {
      if (s.aborted) return;
      setLoadFailed(true);
      reportFailure(notify, error, "load", s);
    }
  }

  useEffect(() => {
    void load();
    // Loads once per mount; the section is remounted for each session.
  }, []);

  useEffect(
    () =>
      subscribe?.((event) => {
        const data = event.data;
        if ((event.type === "task.created" || event.type === "task.updated") && isTask(data)) {
          // This page's own change arrives too; it is applied once either way.
          setTasks((current) => {
            if (current === null) return current;
            return current.some((t) => t.id === data.id)
              ? current.map((t) => (t.id === data.id ? data : t))
              : [data, ...current];
          });
        } else if (event.type === "task.deleted") {
          const id = (data as { id?: unknown } | null)?.id;
          if (typeof id === "number") setTasks((current) => current?.filter((t) => t.id !== id) ?? current);
        }
      }),
    [subscribe],
  );

  async function add(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    if (adding) return;
    const s = signal();
    setAdding(true);
    try {
      // The server trims and checks the title, so its rules live in one place.
      const task = await api<Task>("/api/tasks", { method: "POST", json: { title }, signal: s });
      // Its live event may have arrived first; the task is listed once.
      setTasks((current) => [task, ...(current ?? []).filter((t) => t.id !== task.id)]);
      setTitle("");
      notify({ kind: "info", text: "Task added." });
    } catch (error) {
      reportFailure(notify, error, "task", s);
    } finally {
      if (!s.aborted) setAdding(false);
    }
  }

  function replace(task: Task) {
    setTasks((current) => current?.map((t) => (t.id === task.id ? task : t)) ?? current);
  }

  function remove(id: number) {
    setTasks((current) => current?.filter((t) => t.id !== id) ?? current);
    // The focused Delete button has just gone; keep keyboard users in the section.
    headingRef.current?.focus();
  }

  return (
    <section className="card" aria-labelledby="tasks-heading">
      <h2 id="tasks-heading" ref={headingRef} tabIndex={-1}>
        Tasks
      </h2>
      <form className="inline-form" onSubmit={add}>
        <label htmlFor={newTaskId}>New task</label>
        <div className="row">
          <input
            id={newTaskId}
            type="text"
            value={title}
            onChange={(e) => setTitle(e.target.value)}
            maxLength={500}
            autoComplete="off"
          />
          <button type="submit" aria-disabled={adding}>
            Add task
          </button>
        </div>
      </form>
      {tasks === null && !loadFailed && <p className="muted">Loading tasks…</p>}
      {loadFailed && (
        <p>
          Tasks could not be loaded.{" "}
          <button type="button" className="link" onClick={() => void load()}>
            Try again
          </button>
        </p>
      )}
      {tasks !== null && tasks.length === 0 && <p className="muted">No tasks yet.</p>}
      {/* Always present once loaded, even when empty, so tests can find it. */}
      {tasks !== null && (
        <ul className="task-list" data-testid="task-list">
          {tasks.map((task) => (
            <TaskItem
              key={task.id}
              task={task}
              notify={notify}
              signal={signal}
              onChanged={replace}
              onRemoved={remove}
            />
          ))}
        </ul>
      )}
    </section>
  );
}

interface TaskItemProps {
  task: Task;
  notify: Notify;
  signal: () => AbortSignal;
  onChanged: (task: Task) => void;
  onRemoved: (id: number) => void;
}

function TaskItem({ task, notify, signal, onChanged, onRemoved }: TaskItemProps) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState(task.title);
  const [busy, setBusy] = useState(false);
  const editButton = useRef<HTMLButtonElement>(null);
  const editInput = useRef<HTMLInputElement>(null);
  // Focus is moved only after an edit starts or ends, not on first render.
  const focusAfterEdit = useRef<"input" | "button" | null>(null);
  const checkboxId = useId();
  const editId = useId();

  useEffect(() => {
    if (focusAfterEdit.current === "input") editInput.current?.focus();
    if (focusAfterEdit.current === "button") editButton.current?.focus();
    focusAfterEdit.current = null;
  }, [editing]);

  /** Sends a change; a 404 means the task is gone, so it leaves the list too. */
  async function change(body: { title?: string; completed?: boolean }): Promise<boolean> {
    if (busy) return false;
    const s = signal();
    setBusy(true);
    try {
      const updated = await api<Task>(`/api/tasks/${task.id}`, { method: "PUT", json: body, signal: s });
      onChanged(updated);
      return true;
    } catch (error) {
      reportFailure(notify, error, "task", s);
      if (error instanceof ApiError && error.status === 404 && !s.aborted) onRemoved(task.id);
      return false;
    } finally {
      if (!s.aborted) setBusy(false);
    }
  }

  function startEditing() {
    setDraft(task.title);
    focusAfterEdit.current = "input";
    setEditing(true);
  }

  function stopEditing() {
    focusAfterEdit.current = "button";
    setEditing(false);
  }

  async function save(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    if (await change({ title: draft })) {
      stopEditing();
      notify({ kind: "info", text: "Task renamed." });
    }
  }

  function cancelOnEscape(event: KeyboardEvent<HTMLInputElement>) {
    if (event.key === "Escape") {
      event.preventDefault();
      stopEditing();
    }
  }

  async function toggle() {
    if (await change({ completed: !task.completed })) {
      notify({ kind: "info", text: task.completed ? "Task marked as not done." : "Task marked as done." });
    }
  }

  async function destroy() {
    if (busy) return;
    const s = signal();
    setBusy(true);
    try {
      await api<void>(`/api/tasks/${task.id}`, { method: "DELETE", signal: s });
      onRemoved(task.id);
      notify({ kind: "info", text: "Task deleted." });
    } catch (error) {
      reportFailure(notify, error, "task", s);
      if (error instanceof ApiError && error.status === 404 && !s.aborted) onRemoved(task.id);
      else if (!s.aborted) setBusy(false);
    }
  }

  if (editing) {
    return (
      <li className="task editing" aria-busy={busy}>
        <form className="task-edit" onSubmit={save}>
          <label htmlFor={editId} className="visually-hidden">
            Task title
          </label>
          <input
            id={editId}
            ref={editInput}
            type="text"
            value={draft}
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={cancelOnEscape}
            maxLength={500}
            autoComplete="off"
          />
          <div className="actions">
            <button type="submit" aria-disabled={busy}>
              Save
            </button>
            <button type="button" className="secondary" onClick={stopEditing}>
              Cancel
            </button>
          </div>
        </form>
      </li>
    );
  }

  return (
    <li className={task.completed ? "task done" : "task"} aria-busy={busy}>
      <input
        id={checkboxId}
        type="checkbox"
        checked={task.completed}
        onChange={() => void toggle()}
      />
      {/* The label makes the title the checkbox's name and a bigger click target. */}
      <label htmlFor={checkboxId} className="task-title">
        {task.title}
      </label>
      <div className="actions">
        <button type="button" ref={editButton} className="secondary" onClick={startEditing}>
          Edit<span className="visually-hidden"> “{task.title}”</span>
        </button>
        <button type="button" className="danger" onClick={() => void destroy()} aria-disabled={busy}>
          Delete<span className="visually-hidden"> “{task.title}”</span>
        </button>
      </div>
    </li>
  );
}
