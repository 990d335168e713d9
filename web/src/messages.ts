import { ApiError } from "./api";

/** One line for the message area: errors are announced at once, notices politely. */
export interface Message {
  kind: "info" | "error";
  text: string;
}

/**
 * What the user was doing, so the same status can be explained in words that
 * fit: a 409 means "email taken" when registering and "not enough stock" when
 * ordering, and a 401 means a wrong password when signing in.
 */
export type Action = "login" | "register" | "task" | "order" | "load" | "logout";

/** Turns any failure into a sentence for the page; raw bodies are never shown. */
export function describeError(error: unknown, action: Action): string {
  if (!(error instanceof ApiError)) return "Something unexpected went wrong. Reload the page and try again.";

  if (error.code === "network") return "Could not reach the server. Check your connection and try again.";
  if (error.code === "signed_out") return "Your session has ended; sign in again.";
  if (error.code === "bad_response") return "The server sent an answer this page could not read. Try again.";

  switch (error.status) {
    case 401:
      return action === "login" ? "Wrong email or password." : "Your session has ended; sign in again.";
    case 403:
      return "You do not have permission to do that.";
    case 404:
      if (action === "task") return "That task no longer exists.";
      if (action === "order") return "That order no longer exists.";
      return "That could not be found.";
    case 409:
      if (action === "register") return "That email is already registered.";
      if (action === "order") return "Not enough stock for that order.";
      return "That clashes with a change made elsewhere. Reload and try again.";
    case 422:
      // The server's validation messages are written for people (for
      // example "title must be 1 to 500 characters after trimming").
      return sentence(error.message);
    case 429:
      return error.retryAfter !== undefined
        ? `Too many attempts; try again in ${error.retryAfter} ${error.retryAfter === 1 ? "second" : "seconds"}.`
        : "Too many attempts; try again shortly.";
    case 503:
      return "The service is unavailable right now; try again shortly.";
  }
  if (error.status >= 500) return `Something went wrong on the server (HTTP ${error.status}). Try again shortly.`;
  if (error.status === 400 || error.status === 413) return sentence(error.message);
  return `The request could not be completed (HTTP ${error.status}).`;
}

/** Capitalises and ends with a full stop, so server messages read like the page's own. */
function sentence(text: string): string {
  const trimmed = text.trim();
  if (trimmed === "") return "The request was not accepted.";
  const capitalised = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capitalised) ? capitalised : `${capitalised}.`;
}

/** How sections hand a message to the page's message area. */
export type Notify = (message: Message) => void;

/**
 * Reports a failure unless there is nothing useful to say: a request that
 * was cancelled because its section went away (on sign-out, for instance),
 * or an ended session, which the page announces once by itself.
 */
export function reportFailure(notify: Notify, error: unknown, action: Action, signal?: AbortSignal): void {
  if (signal?.aborted) return;
  if (error instanceof ApiError && error.code === "signed_out") return;
  notify({ kind: "error", text: describeError(error, action) });
}
