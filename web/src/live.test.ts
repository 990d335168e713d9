import { describe, expect, test } from "vitest";
import { compareIds, connectLive, socketUrl, type LiveEvent, type LiveStatus, type SocketLike } from "./live";

/** A socket the test drives by hand. */
class FakeSocket implements SocketLike {
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number }) => void) | null = null;
  closedWith: number | null = null;
  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {}
  send(value: unknown) {
    this.onmessage?.({ data: typeof value === "string" ? value : JSON.stringify(value) });
  }
  ready() {
    this.send({ type: "ready" });
  }
  event(id: string, type = "task.created", data: unknown = { id: 1 }) {
    this.send({ id, type, data });
  }
  serverClose(code: number) {
    this.onclose?.({ code });
  }
  close(code?: number) {
    this.closedWith = code ?? 1005;
    this.onclose?.({ code: code ?? 1005 });
  }
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

function harness(tokens: string[] = ["t1", "t2", "t3"]) {
  const sockets: FakeSocket[] = [];
  const events: LiveEvent[] = [];
  const statuses: LiveStatus[] = [];
  const staleAsked: (string | null)[] = [];
  const waits: number[] = [];
  let pending: (() => void) | null = null;
  let next = 0;
  const live = connectLive({
    url: "ws://example.test/api/notifications/ws",
    token: async (stale) => {
      staleAsked.push(stale);
      if (next >= tokens.length) throw new Error("signed out");
      // The current token unless a different one is wanted.
      if (stale === null && next > 0) return tokens[next - 1]!;
      return tokens[next++]!;
    },
    onEvent: (event) => events.push(event),
    onStatus: (status) => statuses.push(status),
    socket: (url, protocols) => {
      const socket = new FakeSocket(url, protocols);
      sockets.push(socket);
      return socket;
    },
    schedule: (run, ms) => {
      waits.push(ms);
      pending = run;
    },
  });
  return {
    live,
    sockets,
    events,
    statuses,
    staleAsked,
    waits,
    last: (): FakeSocket => sockets[sockets.length - 1]!,
    runPending: async () => {
      const run = pending;
      pending = null;
      run?.();
      await tick();
    },
  };
}

describe("event ids", () => {
  test.each([
    ["1-0", "2-0", -1],
    ["10-5", "10-12", -1],
    ["9-99", "10-0", -1],
    ["10-12", "10-12", 0],
    ["11-0", "10-99", 1],
  ])("%s against %s", (a, b, sign) => {
    expect(Math.sign(compareIds(a, b))).toBe(sign);
  });

  test("socket URLs follow the page's scheme", () => {
    expect(socketUrl("/api/notifications/ws", "https://example.test")).toBe(
      "wss://example.test/api/notifications/ws",
    );
    expect(socketUrl("/x", "http://127.0.0.1:8080")).toBe("ws://127.0.0.1:8080/x");
  });
});

describe("the live connection", () => {
  test("sends the token as the bearer subprotocol, never in the URL", async () => {
    const h = harness();
    await tick();
    expect(h.last().protocols).toEqual(["bearer", "t1"]);
    expect(h.last().url).toBe("ws://example.test/api/notifications/ws");
    expect(h.last().url).not.toContain("t1");
    h.last().ready();
    expect(h.statuses).toEqual(["connecting", "live"]);
  });

  test("delivers events once and resumes after the last id seen", async () => {
    const h = harness();
    await tick();
    h.last().ready();
    h.last().event("100-0");
    h.last().event("100-1");
    h.last().event("100-1"); // repeated: dropped
    h.last().event("99-5"); // older: dropped
    h.last().send("not json");
    h.last().send({ type: "task.created" }); // no id: dropped
    expect(h.events.map((e) => e.id)).toEqual(["100-0", "100-1"]);

    h.last().serverClose(1013);
    expect(h.statuses.at(-1)).toBe("reconnecting");
    expect(h.waits).toEqual([1000]);
    await h.runPending();
    expect(h.last().url).toBe("ws://example.test/api/notifications/ws?after=100-1");
    // What the service replays, and a duplicate of it live, count once.
    h.last().event("100-2");
    h.last().ready();
    h.last().event("100-2");
    h.last().event("101-0");
    expect(h.events.map((e) => e.id)).toEqual(["100-0", "100-1", "100-2", "101-0"]);
  });

  test("an expired token is replaced at once", async () => {
    const h = harness();
    await tick();
    h.last().ready();
    h.last().serverClose(4001);
    await tick();
    expect(h.staleAsked).toEqual([null, "t1"]);
    expect(h.last().protocols).toEqual(["bearer", "t2"]);
    expect(h.waits).toEqual([]);
  });

  test("a refusal before ready asks for a new token, then backs off", async () => {
    const h = harness();
    await tick();
    h.last().serverClose(1006);
    await h.runPending();
    expect(h.staleAsked).toEqual([null, "t1"]);
    h.last().serverClose(1006);
    await h.runPending();
    h.last().serverClose(1006);
    expect(h.waits).toEqual([1000, 2000, 4000]);
  });

  test("a revoked session stops for good", async () => {
    const h = harness();
    await tick();
    h.last().ready();
    h.last().serverClose(4003);
    expect(h.statuses.at(-1)).toBe("stopped");
    expect(h.waits).toEqual([]);
    expect(h.sockets).toHaveLength(1);
  });

  test("being signed out stops it", async () => {
    const h = harness(["only"]);
    await tick();
    h.last().serverClose(4001);
    await tick();
    expect(h.statuses.at(-1)).toBe("stopped");
    expect(h.sockets).toHaveLength(1);
  });

  test("stop closes the socket and nothing reconnects", async () => {
    const h = harness();
    await tick();
    h.last().ready();
    h.live.stop();
    expect(h.last().closedWith).toBe(1000);
    expect(h.waits).toEqual([]);
    expect(h.statuses.at(-1)).toBe("stopped");
  });
});
