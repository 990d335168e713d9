/**
 * Client for the Portcullis API, usable without React.
 *
 * The gateway serves this page and the API from the same origin, so every
 * path is relative (`/api/...`) unless a `baseUrl` is given.
 *
 * ## Where the tokens live, and the trade-off that comes with it
 *
 * The short-lived access token is kept in memory only: it disappears with
 * the page and is never written anywhere a later visitor could find it.
 *
 * The long-lived refresh token is kept in `localStorage`, as the tutorial
 * does, so that a reload (or a new tab) keeps the user signed in: the first
 * API call after a load, or an explicit `restore()`, trades it for a fresh
 * access token.
 *
 * The cost is exposure to cross-site scripting. Any script that runs on
 * this origin — an injected one included — can read `localStorage` and walk
 * away with the refresh token, which keeps working until it is used, revoked
 * or expires. An `httpOnly`, `Secure`, `SameSite=Strict` cookie would keep
 * the token out of reach of scripts, but it needs the auth service to set
 * and read that cookie and the API to defend against cross-site request
 * forgery (for example with a CSRF token or by checking `Origin`), which
 * the API does not do today. Until then the page must treat XSS as a session
 * compromise: render every server string as text, never as HTML, and load
 * no third-party scripts.
 */

/** A task, as `/api/tasks` returns it. */
export interface Task {
  id: number;
  title: string;
  completed: boolean;
  created_at: string;
  updated_at: string;
}

/** One line of `/api/stock`. */
export interface StockItem {
  sku: string;
  name: string;
  quantity: number;
}

/** An order, as `/api/orders` returns it; unknown extra fields are kept. */
export interface Order {
  id: number;
  sku: string;
  quantity: number;
  status: "placed" | "cancelled" | (string & {});
  created_at: string;
  [field: string]: unknown;
}

/** The signed-in account, from `/api/auth/me`. */
export interface Me {
  user_id: number;
  email: string;
  role: string;
  created_at: string;
}

/** What register, login and refresh answer with. */
export interface AuthTokens {
  access: string;
  refresh: string;
  user_id: number;
}

/** Everything that can go wrong with a call, in one shape the page can read. */
export interface ApiErrorInit {
  /** The HTTP status, or 0 when no answer arrived at all. */
  status: number;
  /** The server's `error.code`, or one of the client's own codes below. */
  code: string;
  /** A sentence safe to show as text. */
  message: string;
  /** Seconds to wait, from the `Retry-After` header, when the server sent one. */
  retryAfter?: number;
}

/**
 * Codes the client produces itself (the others come from the server):
 * - `signed_out`: the session ended (refresh refused, or no session at all);
 * - `network`: the request never got an answer;
 * - `bad_response`: a successful answer whose body could not be read;
 * - `http_<status>`: an error answer without the usual JSON envelope.
 */
export class ApiError extends Error implements ApiErrorInit {
  readonly status: number;
  readonly code: string;
  readonly retryAfter?: number;

  constructor(init: ApiErrorInit) {
    super(init.message);
    this.name = "ApiError";
    this.status = init.status;
    this.code = init.code;
    if (init.retryAfter !== undefined) this.retryAfter = init.retryAfter;
  }
}

/** Announced to `onSessionChange` listeners. */
export type SessionChange =
  | { type: "signed-in"; userId: number }
  | { type: "refreshed"; userId: number }
  | { type: "signed-out"; reason: "logout" | "expired" };

/** A snapshot of the session, as far as this page knows it. */
export interface SessionState {
  /** True when a refresh token is held, even before an access token is fetched. */
  signedIn: boolean;
  userId: number | null;
}

/** The part of the Web Storage API the client uses, so tests can pass a fake. */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export interface ClientOptions {
  /** Defaults to the global `fetch`, looked up at call time. */
  fetch?: FetchLike;
  /** Defaults to `localStorage` when usable; `null` keeps the refresh token in memory only. */
  storage?: KeyValueStorage | null;
  /** Prefix for every path; empty (same origin) by default. */
  baseUrl?: string;
  /** The storage key for the saved session. */
  storageKey?: string;
}

export interface RequestOptions {
  method?: string;
  /** A value to send as a JSON body. */
  json?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/** What is kept between page loads. */
interface SavedSession {
  refresh: string;
  user_id: number;
}

export const DEFAULT_STORAGE_KEY = "portcullis.session";

export function createClient(options: ClientOptions = {}) {
  // The global is looked up on every call rather than captured, so that the
  // call keeps `window` as its receiver and a later replacement is honoured.
  const doFetch: FetchLike = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const storage = options.storage === undefined ? browserStorage() : options.storage;
  const baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
  const storageKey = options.storageKey ?? DEFAULT_STORAGE_KEY;

  let access: string | null = null;
  let userId: number | null = null;
  // Mirrors what is saved, and stands in for storage when there is none or
  // when writing to it fails (private browsing modes can refuse writes).
  let saved: SavedSession | null = null;
  // Set once a write to storage fails; from then on only the memory copy is
  // trusted, since storage would no longer reflect this page's session.
  let storageFailed = false;
  // The single refresh in flight, shared by every request that needs it.
  let refreshing: Promise<string> | null = null;
  // Bumped whenever the session is replaced or ended, so that a refresh
  // started for an earlier session cannot bring that session back.
  let generation = 0;
  const listeners = new Set<(change: SessionChange) => void>();

  function readSaved(): SavedSession | null {
    if (storage && !storageFailed) {
      // Storage is read each time rather than cached so that a refresh token
      // rotated by another tab of the same site is the one used here.
      let raw: string | null;
      try {
        raw = storage.getItem(storageKey);
      } catch {
        return saved;
      }
      if (raw === null) return null;
      try {
        const value: unknown = JSON.parse(raw);
        // Anything else under the key (an older format, a manual edit) is
        // treated as no session rather than as an error.
        return isSavedSession(value) ? value : null;
      } catch {
        return null;
      }
    }
    return saved;
  }

  function writeSaved(value: SavedSession | null): void {
    saved = value;
    if (!storage || storageFailed) return;
    try {
      if (value === null) storage.removeItem(storageKey);
      else storage.setItem(storageKey, JSON.stringify(value));
    } catch {
      // The in-memory copy still works for this page; only reloads lose it.
      storageFailed = true;
    }
  }

  function emit(change: SessionChange): void {
    for (const listener of [...listeners]) {
      try {
        listener(change);
      } catch (error) {
        // One broken listener must not stop the others or the client; the
        // error is rethrown on its own so it still shows up in the console.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  function adopt(tokens: AuthTokens): void {
    access = tokens.access;
    userId = tokens.user_id;
    writeSaved({ refresh: tokens.refresh, user_id: tokens.user_id });
  }

  /** Forgets every token and tells listeners, if there was anything to forget. */
  function endSession(reason: "logout" | "expired"): void {
    const hadSession = access !== null || saved !== null || readSaved() !== null;
    generation += 1;
    access = null;
    userId = null;
    refreshing = null;
    writeSaved(null);
    if (hadSession) emit({ type: "signed-out", reason });
  }

  async function send(path: string, opts: RequestOptions, token: string | null): Promise<Response> {
    const headers: Record<string, string> = { Accept: "application/json", ...opts.headers };
    let body: string | undefined;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      // Serialised on every send, so a retried request carries the same body.
      body = JSON.stringify(opts.json);
    }
    if (token !== null) headers.Authorization = `Bearer ${token}`;
    const init: RequestInit = {
      method: opts.method ?? (body === undefined ? "GET" : "POST"),
      headers,
      credentials: "same-origin",
    };
    if (body !== undefined) init.body = body;
    if (opts.signal) init.signal = opts.signal;
    try {
      return await doFetch(baseUrl + path, init);
    } catch (error) {
      // A cancelled request is the caller's own doing and is passed on as is.
      if (opts.signal?.aborted) throw error;
      throw new ApiError({
        status: 0,
        code: "network",
        message: "Could not reach the server. Check your connection and try again.",
      });
    }
  }

  /**
   * Returns an access token to retry with, after a request sent with `used`
   * was refused with 401.
   *
   * Refresh tokens are single-use (each refresh spends the old one), so two
   * refreshes racing with the same token would sign the user out. Hence:
   * - while a refresh is in flight, everyone waits for that one;
   * - when the access token has already been replaced since `used` was sent,
   *   the newer one is returned without refreshing again;
   * - only otherwise does a new refresh start.
   */
  function renew(used: string | null): Promise<string> {
    if (refreshing) return refreshing;
    if (access !== null && access !== used) return Promise.resolve(access);

    const startedIn = generation;
    const attempt = (async (): Promise<string> => {
      const current = readSaved();
      if (!current) {
        endSession("expired");
        throw signedOut();
      }
      // A network failure here propagates as `network` and keeps the session:
      // the refresh token may well still be good once the network is back.
      const response = await send("/api/auth/refresh", { method: "POST", json: { refresh: current.refresh } }, null);
      if (startedIn !== generation) {
        await discard(response);
        throw signedOut();
      }
      if (response.ok) {
        const tokens = await readJson<AuthTokens>(response);
        if (startedIn !== generation) throw signedOut();
        if (!isAuthTokens(tokens)) {
          throw new ApiError({ status: response.status, code: "bad_response", message: UNREADABLE });
        }
        adopt(tokens);
        emit({ type: "refreshed", userId: tokens.user_id });
        return tokens.access;
      }
      if (isDefinitiveRefusal(response.status)) {
        await discard(response);
        endSession("expired");
        throw signedOut();
      }
      // 429 and 5xx say nothing about the token itself, so the session is
      // kept and the caller sees why this attempt failed.
      throw await errorFrom(response);
    })();

    refreshing = attempt;
    attempt
      .finally(() => {
        if (refreshing === attempt) refreshing = null;
      })
      .catch(() => {
        // Callers of `renew` handle the rejection; this copy only clears state.
      });
    return attempt;
  }

  /**
   * Calls the API with the current access token. A 401 leads to one shared
   * refresh and one retry; a retry that is refused again ends the session
   * instead of refreshing again, so a request can never loop.
   */
  async function api<T = unknown>(path: string, opts: RequestOptions = {}): Promise<T> {
    let token = access;
    // After a reload only the refresh token is known: fetch an access token
    // first instead of sending a request that is certain to be refused.
    if (token === null && readSaved() !== null) token = await renew(null);

    let response = await send(path, opts, token);
    if (response.status === 401) {
      await discard(response);
      const fresh = await renew(token);
      response = await send(path, opts, fresh);
      if (response.status === 401) {
        // A token minted moments ago was refused: the account was most
        // likely disabled or signed out elsewhere. Stop here.
        await discard(response);
        endSession("expired");
        throw signedOut();
      }
    }
    if (!response.ok) throw await errorFrom(response);
    return readJson<T>(response);
  }

  async function authenticate(path: string, email: string, password: string): Promise<AuthTokens> {
    const response = await send(path, { method: "POST", json: { email, password } }, null);
    if (!response.ok) throw await errorFrom(response);
    const tokens = await readJson<AuthTokens>(response);
    if (!isAuthTokens(tokens)) {
      throw new ApiError({ status: response.status, code: "bad_response", message: UNREADABLE });
    }
    // Whatever session came before is replaced, and a refresh still in
    // flight for it must not overwrite the new tokens.
    generation += 1;
    refreshing = null;
    adopt(tokens);
    emit({ type: "signed-in", userId: tokens.user_id });
    return tokens;
  }

  return {
    api,

    /** Signs in; a wrong email and a wrong password are the same 401. */
    login(email: string, password: string): Promise<AuthTokens> {
      return authenticate("/api/auth/login", email, password);
    },

    /** Creates an account and signs in to it. */
    register(email: string, password: string): Promise<AuthTokens> {
      return authenticate("/api/auth/register", email, password);
    },

    /**
     * Signs out. The tokens are forgotten first, so the page is signed out
     * even when the server cannot be told (offline, or the service is down);
     * the server is then asked to revoke the refresh token, and any failure
     * of that request is ignored.
     */
    async logout(): Promise<void> {
      const current = readSaved() ?? saved;
      endSession("logout");
      if (!current) return;
      try {
        const response = await send("/api/auth/logout", { method: "POST", json: { refresh: current.refresh } }, null);
        await discard(response);
      } catch {
        // Already signed out locally; the token expires on its own.
      }
    },

    /**
     * Makes sure an access token is held, refreshing with the saved refresh
     * token if needed. Resolves to false when there is no session to restore
     * or the refresh token was refused; rejects on network or server trouble.
     */
    async restore(): Promise<boolean> {
      if (access !== null) return true;
      if (readSaved() === null) return false;
      try {
        await renew(null);
        return true;
      } catch (error) {
        if (error instanceof ApiError && error.code === "signed_out") return false;
        throw error;
      }
    },

    /**
     * Ends this page's session when the saved one has ended or changed hands
     * elsewhere: signed out in another tab, another account signed in there,
     * or, for a page the browser brings back from its back/forward cache,
     * signed out after this page was left. Storage is not touched, since it
     * already says what is true. Returns whether this page is still signed in.
     */
    syncWithStorage(): boolean {
      if (!storage || storageFailed) return access !== null || saved !== null;
      const current = readSaved();
      const held = access !== null || saved !== null;
      const sameAccount = current !== null && (userId === null || current.user_id === userId);
      if (held && !sameAccount) {
        generation += 1;
        access = null;
        userId = null;
        refreshing = null;
        saved = null;
        emit({ type: "signed-out", reason: "logout" });
        return false;
      }
      return held || current !== null;
    },

    /**
     * An access token for a WebSocket, which cannot go through `api`'s
     * refresh-on-401. `stale` is a token a socket was refused with or that
     * expired: a different one is returned, refreshing (once, shared with
     * any request doing the same) when needed. Rejects when signed out.
     */
    async socketToken(stale: string | null = null): Promise<string> {
      if (access !== null && access !== stale) return access;
      if (access === null && readSaved() === null) throw signedOut();
      return renew(stale ?? access);
    },

    session(): SessionState {
      const current = readSaved();
      return { signedIn: access !== null || current !== null, userId: userId ?? current?.user_id ?? null };
    },

    /** Subscribes to session changes; returns the function that unsubscribes. */
    onSessionChange(listener: (change: SessionChange) => void): () => void {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
  };
}

export type Client = ReturnType<typeof createClient>;

const UNREADABLE = "The server sent an answer this page could not read.";

function signedOut(): ApiError {
  return new ApiError({ status: 401, code: "signed_out", message: "Your session has ended. Sign in again." });
}

/**
 * Whether a refresh answer means the refresh token itself is no good (so
 * retrying later cannot help), as opposed to a passing failure.
 */
function isDefinitiveRefusal(status: number): boolean {
  return status >= 400 && status < 500 && status !== 408 && status !== 429;
}

/** Reads a successful body; an empty body (such as a 204) gives `undefined`. */
async function readJson<T>(response: Response): Promise<T> {
  if (response.status === 204 || response.status === 205) return undefined as T;
  const text = await response.text();
  if (text.trim() === "") return undefined as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new ApiError({ status: response.status, code: "bad_response", message: UNREADABLE });
  }
}

/** Builds an `ApiError` from the `{"error": {"code", "message"}}` envelope. */
async function errorFrom(response: Response): Promise<ApiError> {
  const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
  let text = "";
  try {
    text = await response.text();
  } catch {
    // An unreadable body is treated like a body without the envelope.
  }
  let code = `http_${response.status}`;
  // Bodies that are not the JSON envelope (an HTML page from a proxy, say)
  // are never shown: they get a plain sentence instead.
  let message = `The server answered with an unexpected error (HTTP ${response.status}).`;
  try {
    const parsed: unknown = JSON.parse(text);
    const envelope = isObject(parsed) ? parsed.error : undefined;
    if (isObject(envelope) && typeof envelope.code === "string" && typeof envelope.message === "string") {
      code = envelope.code;
      message = envelope.message;
    }
  } catch {
    // Keep the generic message.
  }
  const init: ApiErrorInit = { status: response.status, code, message };
  if (retryAfter !== undefined) init.retryAfter = retryAfter;
  return new ApiError(init);
}

/** Accepts both forms of `Retry-After`: a number of seconds, or an HTTP date. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, Math.ceil((date - now) / 1000));
}

/** Drains a body that is not needed, so the connection can be reused. */
async function discard(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // Nothing useful to do about a body that cannot be cancelled.
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function isSavedSession(value: unknown): value is SavedSession {
  return isObject(value) && typeof value.refresh === "string" && typeof value.user_id === "number";
}

function isAuthTokens(value: unknown): value is AuthTokens {
  return (
    isObject(value) &&
    typeof value.access === "string" &&
    typeof value.refresh === "string" &&
    typeof value.user_id === "number"
  );
}

/** `localStorage`, or null where it is missing or blocked. */
function browserStorage(): KeyValueStorage | null {
  try {
    return typeof localStorage === "undefined" ? null : localStorage;
  } catch {
    // Some browsers throw on mere access when storage is disabled.
    return null;
  }
}

/** The client the page uses. */
export const client = createClient();

export const api = client.api;
export const login = client.login;
export const register = client.register;
export const logout = client.logout;
export const restore = client.restore;
export const session = client.session;
export const onSessionChange = client.onSessionChange;
export const syncWithStorage = client.syncWithStorage;
export const socketToken = client.socketToken;
