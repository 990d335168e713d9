import { describe, expect, test, vi } from "vitest";
import { ApiError, createClient, parseRetryAfter, type KeyValueStorage, type SessionChange } from "./api";
import { describeError } from "./messages";

/** An in-memory stand-in for localStorage. */
class MemoryStorage implements KeyValueStorage {
  private items = new Map<string, string>();
  get length(): number {
    return this.items.size;
  }
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
}

interface Call {
  method: string;
  path: string;
  auth: string | null;
  body: unknown;
}

function deferred() {
  let release!: () => void;
  const promise = new Promise<void>((resolve) => {
    release = resolve;
  });
  return { promise, release };
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(body === undefined ? null : JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

const unauthorized = () =>
  json(401, { error: { code: "unauthorized", message: "missing or invalid token" } }, { "WWW-Authenticate": "Bearer" });

/**
 * A fake gateway with the real token rules: access tokens can be expired by
 * the test, and each refresh token works exactly once (rotation).
 */
function fakeServer() {
  let issued = 0;
  const access = new Set<string>();
  const refresh = new Set<string>();
  const calls: Call[] = [];
  const holds = new Map<string, Promise<void>>();
  const server = {
    calls,
    /** What /api/auth/logout does: answer 204, fail with 503, or not answer at all. */
    logout: "ok" as "ok" | "unavailable" | "network",
    /** When set, protected routes refuse every token. */
    refuseAll: false,
    /** Any response for a path of this method waits for the returned release. */
    hold(method: string, path: string) {
      const gate = deferred();
      holds.set(`${method} ${path}`, gate.promise);
      return gate.release;
    },
    issue() {
      issued += 1;
      const tokens = { access: `access-${issued}`, refresh: `refresh-${issued}`, user_id: 7 };
      access.add(tokens.access);
      refresh.add(tokens.refresh);
      return tokens;
    },
    expireAccess(token: string) {
      access.delete(token);
    },
    revokeRefresh(token: string) {
      refresh.delete(token);
    },
    count(method: string, path: string) {
      return calls.filter((c) => c.method === method && c.path === path).length;
    },
    fetch: async (url: string, init: RequestInit): Promise<Response> => {
      const method = init.method ?? "GET";
      const auth = new Headers(init.headers).get("Authorization");
      const body: unknown = typeof init.body === "string" ? JSON.parse(init.body) : undefined;
      calls.push({ method, path: url, auth, body });
      const gate = holds.get(`${method} ${url}`);
      if (gate) {
        holds.delete(`${method} ${url}`);
        await gate;
      }
      // Answers come back on a later task, as they would from a network.
      await new Promise((resolve) => setTimeout(resolve, 0));

      if (url === "/api/auth/login" && method === "POST") return json(200, server.issue());
      if (url === "/api/auth/refresh" && method === "POST") {
        const token = (body as { refresh: string }).refresh;
        if (!refresh.delete(token)) return json(401, { error: { code: "unauthorized", message: "invalid token" } });
        return json(200, server.issue());
      }
      if (url === "/api/auth/logout" && method === "POST") {
        if (server.logout === "network") throw new TypeError("Failed to fetch");
        if (server.logout === "unavailable") return json(503, { error: { code: "unavailable", message: "down" } });
        refresh.delete((body as { refresh: string }).refresh);
        return new Response(null, { status: 204 });
      }
      const token = auth?.replace(/^Bearer /, "") ?? "";
      if (server.refuseAll || !access.has(token)) return unauthorized();
      if (url === "/api/tasks" && method === "GET") return json(200, [{ id: 1, title: "t", completed: false }]);
      return json(404, { error: { code: "not_found", message: "not found" } });
    },
  };
  return server;
}

function setup() {
  const server = fakeServer();
  const storage = new MemoryStorage();
  const client = createClient({ fetch: server.fetch, storage });
  const events: SessionChange[] = [];
  client.onSessionChange((change) => events.push(change));
  return { server, storage, client, events };
}

function storedRefresh(storage: MemoryStorage): string | undefined {
  const raw = storage.getItem("portcullis.session");
  return raw === null ? undefined : (JSON.parse(raw) as { refresh: string }).refresh;
}

async function rejection(promise: Promise<unknown>): Promise<ApiError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(ApiError);
    return error as ApiError;
  }
  throw new Error("expected the call to fail");
}

describe("bearer tokens", () => {
  test("attaches the access token to API calls but not to login", async () => {
    const { server, client } = setup();
    await client.login("a@example.com", "password1");
    await client.api("/api/tasks");

    expect(server.calls.map((c) => [c.path, c.auth])).toEqual([
      ["/api/auth/login", null],
      ["/api/tasks", "Bearer access-1"],
    ]);
  });

  test("keeps the access token out of storage and the refresh token in it", async () => {
    const { client, storage } = setup();
    await client.login("a@example.com", "password1");

    expect(storage.getItem("portcullis.session")).not.toContain("access-1");
    expect(storedRefresh(storage)).toBe("refresh-1");
  });
});

describe("tokens for WebSockets", () => {
  test("the current token, a new one only for the stale one, and one refresh for many", async () => {
    const { server, client } = setup();
    await client.login("a@example.com", "password1");
    await expect(client.socketToken()).resolves.toBe("access-1");
    await expect(client.socketToken("an-older-token")).resolves.toBe("access-1");
    expect(server.count("POST", "/api/auth/refresh")).toBe(0);

    const both = await Promise.all([client.socketToken("access-1"), client.socketToken("access-1")]);
    expect(both).toEqual(["access-2", "access-2"]);
    expect(server.count("POST", "/api/auth/refresh")).toBe(1);
  });

  test("signed out, it is refused", async () => {
    const { client } = setup();
    expect((await rejection(client.socketToken())).code).toBe("signed_out");
  });
});

describe("refresh on 401", () => {
  test("a 401 leads to exactly one refresh and a retry with the new token", async () => {
    const { server, client, storage } = setup();
    await client.login("a@example.com", "password1");
    server.expireAccess("access-1");

    await expect(client.api("/api/tasks")).resolves.toHaveLength(1);

    expect(server.count("POST", "/api/auth/refresh")).toBe(1);
    expect(server.calls.find((c) => c.path === "/api/auth/refresh")?.body).toEqual({ refresh: "refresh-1" });
    expect(server.calls.filter((c) => c.path === "/api/tasks").map((c) => c.auth)).toEqual([
      "Bearer access-1",
      "Bearer access-2",
    ]);
    // The rotated refresh token replaced the spent one.
    expect(storedRefresh(storage)).toBe("refresh-2");
  });

  test("five concurrent 401s share a single refresh and all succeed", async () => {
    const { server, client } = setup();
    await client.login("a@example.com", "password1");
    server.expireAccess("access-1");
    // The refresh answer is held until all five requests have been refused,
    // so they really are waiting at the same time.
    const release = server.hold("POST", "/api/auth/refresh");

    const results = Promise.all(Array.from({ length: 5 }, () => client.api("/api/tasks")));
    await vi.waitFor(() => {
      expect(server.count("POST", "/api/auth/refresh")).toBe(1);
      expect(server.count("GET", "/api/tasks")).toBe(5);
    });
    // Let every first answer (401) arrive while the refresh is still held.
    await new Promise((resolve) => setTimeout(resolve, 10));
    release();

    await expect(results).resolves.toHaveLength(5);
    expect(server.count("POST", "/api/auth/refresh")).toBe(1);
    const retries = server.calls.filter((c) => c.path === "/api/tasks").slice(5);
    expect(retries.map((c) => c.auth)).toEqual(Array(5).fill("Bearer access-2"));
  });

  test("a 401 for an access token already replaced retries without refreshing again", async () => {
    const { server, client, storage } = setup();
    await client.login("a@example.com", "password1");
    server.expireAccess("access-1");

    // The first request's answer is held back, so it arrives (as a 401 for
    // access-1) only after the second request has already refreshed.
    const release = server.hold("GET", "/api/tasks");
    const slow = client.api("/api/tasks");
    await vi.waitFor(() => expect(server.count("GET", "/api/tasks")).toBe(1));
    await client.api("/api/tasks");
    expect(server.count("POST", "/api/auth/refresh")).toBe(1);
    release();

    await expect(slow).resolves.toHaveLength(1);
    // Refreshing again would have spent refresh-2 for nothing (or, with a
    // stale token, signed the user out).
    expect(server.count("POST", "/api/auth/refresh")).toBe(1);
    expect(storedRefresh(storage)).toBe("refresh-2");
  });

  test("a refused refresh clears the session, empties storage and notifies listeners", async () => {
    const { server, client, storage, events } = setup();
    await client.login("a@example.com", "password1");
    server.expireAccess("access-1");
    server.revokeRefresh("refresh-1");

    const error = await rejection(client.api("/api/tasks"));

    expect(error.code).toBe("signed_out");
    expect(error.status).toBe(401);
    expect(storage.length).toBe(0);
    expect(client.session()).toEqual({ signedIn: false, userId: null });
    expect(events).toEqual([
      { type: "signed-in", userId: 7 },
      { type: "signed-out", reason: "expired" },
    ]);
  });

  test("a retry refused again does not refresh a second time and does not loop", async () => {
    const { server, client, events } = setup();
    await client.login("a@example.com", "password1");
    server.refuseAll = true;

    const error = await rejection(client.api("/api/tasks"));
    // Give any stray follow-up request the chance to show itself.
    await new Promise((resolve) => setTimeout(resolve, 20));

    expect(error.code).toBe("signed_out");
    expect(server.calls.map((c) => `${c.method} ${c.path}`)).toEqual([
      "POST /api/auth/login",
      "GET /api/tasks",
      "POST /api/auth/refresh",
      "GET /api/tasks",
    ]);
    expect(events.at(-1)).toEqual({ type: "signed-out", reason: "expired" });
  });

  test("a refresh that cannot reach the server keeps the session", async () => {
    const { server, client, storage } = setup();
    await client.login("a@example.com", "password1");
    server.expireAccess("access-1");
    const realFetch = server.fetch;
    const flaky = createClient({
      storage,
      fetch: (url, init) => (url === "/api/auth/refresh" ? Promise.reject(new TypeError("offline")) : realFetch(url, init)),
    });

    const error = await rejection(flaky.api("/api/tasks"));

    expect(error.code).toBe("network");
    expect(storedRefresh(storage)).toBe("refresh-1");
  });
});

describe("restoring after a reload", () => {
  test("the first calls refresh once with the saved token before sending anything", async () => {
    const server = fakeServer();
    const first = server.issue();
    const storage = new MemoryStorage();
    storage.setItem("portcullis.session", JSON.stringify({ refresh: first.refresh, user_id: 7 }));
    const client = createClient({ fetch: server.fetch, storage });

    expect(client.session()).toEqual({ signedIn: true, userId: 7 });
    await Promise.all([client.api("/api/tasks"), client.api("/api/tasks"), client.restore()]);

    expect(server.count("POST", "/api/auth/refresh")).toBe(1);
    expect(server.calls.filter((c) => c.path === "/api/tasks").map((c) => c.auth)).toEqual([
      "Bearer access-2",
      "Bearer access-2",
    ]);
  });

  test("restore() reports false when there is no saved session", async () => {
    const { server, client } = setup();
    await expect(client.restore()).resolves.toBe(false);
    expect(server.calls).toEqual([]);
  });
});

describe("logout", () => {
  test.each(["network", "unavailable"] as const)(
    "forgets the tokens even when the logout call fails (%s)",
    async (failure) => {
      const { server, client, storage, events } = setup();
      await client.login("a@example.com", "password1");
      server.logout = failure;

      await expect(client.logout()).resolves.toBeUndefined();

      expect(server.calls.at(-1)).toMatchObject({ path: "/api/auth/logout", body: { refresh: "refresh-1" } });
      expect(storage.length).toBe(0);
      expect(client.session().signedIn).toBe(false);
      expect(events.at(-1)).toEqual({ type: "signed-out", reason: "logout" });

      // Nothing is left to authenticate with, and nothing is refreshed.
      const error = await rejection(client.api("/api/tasks"));
      expect(error.code).toBe("signed_out");
      expect(server.calls.at(-1)).toMatchObject({ path: "/api/tasks", auth: null });
      expect(server.count("POST", "/api/auth/refresh")).toBe(0);
    },
  );

  test("a refresh in flight when the user signs out does not bring the session back", async () => {
    const { server, client, storage } = setup();
    await client.login("a@example.com", "password1");
    server.expireAccess("access-1");
    // The server never hears of the logout, so the held refresh succeeds and
    // only the client can refuse to adopt its tokens.
    server.logout = "network";
    const release = server.hold("POST", "/api/auth/refresh");

    const pending = client.api("/api/tasks");
    await vi.waitFor(() => expect(server.count("POST", "/api/auth/refresh")).toBe(1));
    await client.logout();
    release();

    expect((await rejection(pending)).code).toBe("signed_out");
    expect(storage.length).toBe(0);
    expect(client.session().signedIn).toBe(false);
  });
});

describe("another tab", () => {
  test("a sign-out there ends the session here without calling anyone", async () => {
    const { server, client, storage, events } = setup();
    await client.login("a@example.com", "password1");
    const other = createClient({ fetch: server.fetch, storage });
    await other.logout();
    const callsBefore = server.calls.length;

    expect(client.syncWithStorage()).toBe(false);

    expect(events.at(-1)).toEqual({ type: "signed-out", reason: "logout" });
    expect(client.session().signedIn).toBe(false);
    expect((await rejection(client.api("/api/tasks"))).code).toBe("signed_out");
    expect(server.calls.slice(callsBefore).map((c) => c.auth)).toEqual([null]);
  });

  test("another account signing in there ends this one and keeps theirs", async () => {
    const { server, client, storage, events } = setup();
    await client.login("a@example.com", "password1");
    storage.setItem("portcullis.session", JSON.stringify({ refresh: "someone-elses", user_id: 99 }));

    expect(client.syncWithStorage()).toBe(false);

    expect(events.at(-1)).toEqual({ type: "signed-out", reason: "logout" });
    expect(JSON.parse(storage.getItem("portcullis.session") ?? "null")).toEqual({ refresh: "someone-elses", user_id: 99 });
    expect(server.count("POST", "/api/auth/logout")).toBe(0);
  });

  test("a refresh there (same account) keeps this session", async () => {
    const { client, storage, events } = setup();
    await client.login("a@example.com", "password1");
    const eventsBefore = events.length;
    const saved = JSON.parse(storage.getItem("portcullis.session") ?? "null");
    storage.setItem("portcullis.session", JSON.stringify({ ...saved, refresh: "rotated-there" }));

    expect(client.syncWithStorage()).toBe(true);
    expect(events.length).toBe(eventsBefore);
    expect(client.session().signedIn).toBe(true);
  });
});

describe("errors", () => {
  function clientAnswering(response: () => Response | Promise<Response>) {
    return createClient({ fetch: async () => response(), storage: new MemoryStorage() });
  }

  test("the server's 422 message is surfaced", async () => {
    const client = clientAnswering(() =>
      json(422, { error: { code: "validation", message: "title must be 1 to 500 characters after trimming" } }),
    );

    const error = await rejection(client.api("/api/tasks", { method: "POST", json: { title: "" } }));

    expect(error).toMatchObject({
      status: 422,
      code: "validation",
      message: "title must be 1 to 500 characters after trimming",
    });
    expect(describeError(error, "task")).toBe("Title must be 1 to 500 characters after trimming.");
  });

  test("a non-JSON 502 body gets a generic message, never the body", async () => {
    const client = clientAnswering(
      () => new Response("<html><body>Bad Gateway</body></html>", { status: 502, headers: { "Content-Type": "text/html" } }),
    );

    const error = await rejection(client.api("/api/stock"));

    expect(error.status).toBe(502);
    expect(error.code).toBe("http_502");
    expect(error.message).not.toContain("<html>");
    expect(error.message).toContain("HTTP 502");
    expect(describeError(error, "load")).not.toContain("Bad Gateway");
  });

  test("a JSON body without the envelope is not shown either", async () => {
    const client = clientAnswering(() => json(500, { detail: "stack trace here" }));
    const error = await rejection(client.api("/api/stock"));
    expect(error.message).not.toContain("stack trace");
  });

  test("a network failure becomes code network", async () => {
    const client = createClient({
      fetch: () => Promise.reject(new TypeError("Failed to fetch")),
      storage: new MemoryStorage(),
    });
    const error = await rejection(client.api("/api/stock"));
    expect(error).toMatchObject({ status: 0, code: "network" });
  });

  test("429 carries Retry-After in seconds and reads as a wait", async () => {
    const client = clientAnswering(() =>
      json(429, { error: { code: "rate_limited", message: "slow down" } }, { "Retry-After": "30" }),
    );
    const error = await rejection(client.login("a@example.com", "wrong"));
    expect(error.retryAfter).toBe(30);
    expect(describeError(error, "login")).toBe("Too many attempts; try again in 30 seconds.");
  });

  test("Retry-After as an HTTP date is turned into seconds", () => {
    const now = Date.parse("2025-01-01T00:00:00Z");
    expect(parseRetryAfter("Wed, 01 Jan 2025 00:00:10 GMT", now)).toBe(10);
    expect(parseRetryAfter("soon", now)).toBeUndefined();
  });

  test("a failed login is a plain 401 that does not try to refresh", async () => {
    const server = fakeServer();
    const client = createClient({
      storage: new MemoryStorage(),
      fetch: (url, init) => (url === "/api/auth/login" ? Promise.resolve(unauthorized()) : server.fetch(url, init)),
    });
    const error = await rejection(client.login("a@example.com", "wrong"));
    expect(error.status).toBe(401);
    expect(describeError(error, "login")).toBe("Wrong email or password.");
    expect(server.calls).toEqual([]);
  });

  test("statuses read as the page's sentences", () => {
    const error = (status: number, code = "x") => new ApiError({ status, code, message: "m" });
    expect(describeError(error(409, "email_taken"), "register")).toBe("That email is already registered.");
    expect(describeError(error(409, "conflict"), "order")).toBe("Not enough stock for that order.");
    expect(describeError(error(503), "load")).toBe("The service is unavailable right now; try again shortly.");
    expect(describeError(error(403), "load")).toBe("You do not have permission to do that.");
    expect(describeError(error(401, "signed_out"), "task")).toBe("Your session has ended; sign in again.");
  });
});
