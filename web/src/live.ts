/**
 * Live events for the signed-in user, from `/api/notifications/ws`.
 *
 * Browsers cannot set `Authorization` on a WebSocket, so the access token
 * goes as the subprotocol pair `bearer, <token>`, which the gateway reads
 * and removes (never in the URL, which servers log).
 *
 * The connection keeps itself up:
 * - every event carries an id; after any reconnect the last id seen is sent
 *   (`?after=`), so what was missed is delivered, and nothing twice;
 * - closed because the token expired (4001), or refused before it was
 *   ready (typically a 401), it asks for a fresh token and reconnects;
 * - closed because the session was revoked (4003), it stops;
 * - otherwise (service restarting, Redis lost: 1001, 1013, a dropped
 *   connection) it reconnects with a growing delay, up to 30 seconds.
 */

/** One event as the service sends it. */
export interface LiveEvent {
  id: string;
  type: string;
  data: unknown;
}

export type LiveStatus = "connecting" | "live" | "reconnecting" | "stopped";

/** Subscribes to live events; returns the function that unsubscribes. */
export type SubscribeLive = (listener: (event: LiveEvent) => void) => () => void;

/** The parts of the browser's WebSocket this module uses. */
export interface SocketLike {
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
  close(code?: number, reason?: string): void;
}

export type SocketFactory = (url: string, protocols: string[]) => SocketLike;

export interface LiveOptions {
  /** `ws://` or `wss://` URL of `/api/notifications/ws`. */
  url: string;
  /**
   * A token to connect with. `stale` is the token the last attempt used
   * when that one was refused or expired: a different one is wanted.
   * Rejecting stops the connection (signed out).
   */
  token: (stale: string | null) => Promise<string>;
  onEvent: (event: LiveEvent) => void;
  onStatus?: (status: LiveStatus) => void;
  socket?: SocketFactory;
  /** For tests: how to wait before reconnecting. */
  schedule?: (run: () => void, ms: number) => unknown;
}

const MAX_DELAY_MS = 30_000;

/** Event ids are `MILLISECONDS-SEQUENCE`; compared as numbers. */
export function compareIds(a: string, b: string): number {
  const [am = 0, as = 0] = a.split("-").map(Number);
  const [bm = 0, bs = 0] = b.split("-").map(Number);
  return am !== bm ? am - bm : as - bs;
}

/** The WebSocket URL for a path on this page's origin. */
export function socketUrl(path: string, origin: string = window.location.origin): string {
  return origin.replace(/^http/, "ws") + path;
}

function isLiveEvent(value: unknown): value is LiveEvent {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as LiveEvent).id === "string" &&
    /^\d+-\d+$/.test((value as LiveEvent).id) &&
    typeof (value as LiveEvent).type === "string"
  );
}

function browserSocket(url: string, protocols: string[]): SocketLike {
  const socket = new WebSocket(url, protocols);
  const like: SocketLike = {
    onmessage: null,
    onclose: null,
    close: (code, reason) => socket.close(code, reason),
  };
  socket.onmessage = (event) => like.onmessage?.({ data: event.data });
  socket.onclose = (event) => like.onclose?.({ code: event.code });
  return like;
}

/** Connects and keeps the connection up until `stop()` is called. */
export function connectLive(options: LiveOptions): { stop(): void } {
  const open: SocketFactory = options.socket ?? browserSocket;
  const schedule = options.schedule ?? ((run, ms) => setTimeout(run, ms));
  const status = (s: LiveStatus) => options.onStatus?.(s);

  let stopped = false;
  let socket: SocketLike | null = null;
  let lastId: string | null = null;
  let failures = 0;
  // The token to replace on the next attempt, when the last one was refused.
  let stale: string | null = null;

  async function connect() {
    if (stopped) return;
    let token: string;
    try {
      token = await options.token(stale);
    } catch {
      stop();
      return;
    }
    if (stopped) return;
    const url = lastId === null ? options.url : `${options.url}?after=${encodeURIComponent(lastId)}`;
    let ready = false;
    const current = open(url, ["bearer", token]);
    socket = current;
    current.onmessage = (message) => {
      if (typeof message.data !== "string") return;
      let parsed: unknown;
      try {
        parsed = JSON.parse(message.data);
      } catch {
        return;
      }
      if ((parsed as { type?: unknown })?.type === "ready") {
        ready = true;
        failures = 0;
        stale = null;
        status("live");
        return;
      }
      if (!isLiveEvent(parsed)) return;
      if (lastId !== null && compareIds(parsed.id, lastId) <= 0) return;
      lastId = parsed.id;
      options.onEvent(parsed);
    };
    current.onclose = (event) => {
      if (socket !== current) return;
      socket = null;
      if (stopped) return;
      if (event.code === 4003) {
        stop();
        return;
      }
      status("reconnecting");
      // An expired token, or a refusal before the socket was ready (the
      // browser hides the status; 401 is the usual one): ask for a new
      // token. Once, then wait as for any other failure.
      if (event.code === 4001 || (!ready && stale !== token)) {
        stale = token;
        if (event.code === 4001) {
          void connect();
          return;
        }
      }
      failures += 1;
      const delay = Math.min(MAX_DELAY_MS, 1000 * 2 ** Math.min(failures - 1, 5));
      schedule(() => void connect(), delay);
    };
  }

  function stop() {
    if (stopped) return;
    stopped = true;
    const current = socket;
    socket = null;
    current?.close(1000, "done");
    status("stopped");
  }

  status("connecting");
  void connect();
  return { stop };
}
