import { useCallback, useEffect, useRef, useState } from "react";
import { api, logout, onSessionChange, restore, session, socketToken, syncWithStorage, type Me } from "./api";
import { connectLive, socketUrl, type LiveEvent, type LiveStatus, type SubscribeLive } from "./live";
import { AuthForm } from "./auth-form";
import { describeError, reportFailure, type Message } from "./messages";
import { StockAndOrders } from "./orders";
import { Tasks } from "./tasks";

/**
 * - `checking`: a saved session is being restored after a load;
 * - `unreachable`: it could not be restored for a passing reason (offline,
 *   service down), so the saved session is kept and can be retried;
 * - `signed-out` / `signed-in`: what they say.
 */
type Phase = "checking" | "unreachable" | "signed-out" | "signed-in";

export function App() {
  const [phase, setPhase] = useState<Phase>(() => (session().signedIn ? "checking" : "signed-out"));
  // Each message gets a sequence number, so that saying the same sentence
  // twice ("Task added.") still replaces the node and is announced again.
  const [message, setMessageState] = useState<(Message & { seq: number }) | null>(null);
  const seq = useRef(0);
  const setMessage = useCallback((next: Message) => {
    seq.current += 1;
    setMessageState({ ...next, seq: seq.current });
  }, []);
  // Bumped on every sign-in, so the private sections are mounted afresh and
  // nothing from one session can survive into the next.
  const [sessionKey, setSessionKey] = useState(0);

  const notify = setMessage;

  useEffect(
    () =>
      onSessionChange((change) => {
        if (change.type === "signed-in") {
          setSessionKey((key) => key + 1);
          setPhase("signed-in");
        } else if (change.type === "signed-out") {
          // Unmounting the private sections drops their data and aborts
          // their requests; the page keeps no history entry for them, so
          // Back cannot bring them back either.
          setPhase("signed-out");
          setMessage(
            change.reason === "expired"
              ? { kind: "error", text: "Your session has ended; sign in again." }
              : { kind: "info", text: "You have signed out." },
          );
        }
      }),
    [],
  );

  const tryRestore = useCallback(async () => {
    setPhase("checking");
    try {
      setPhase((await restore()) ? "signed-in" : "signed-out");
    } catch (error) {
      setPhase("unreachable");
      setMessage({ kind: "error", text: describeError(error, "load") });
    }
  }, []);

  // A sign-out in another tab, or one made after this page was left and
  // the browser later restores it from its back/forward cache, must not
  // leave private data on screen here.
  useEffect(() => {
    const sync = () => void syncWithStorage();
    const onPageShow = (event: PageTransitionEvent) => {
      if (event.persisted) sync();
    };
    window.addEventListener("storage", sync);
    window.addEventListener("pageshow", onPageShow);
    return () => {
      window.removeEventListener("storage", sync);
      window.removeEventListener("pageshow", onPageShow);
    };
  }, []);

  useEffect(() => {
    if (phase === "checking") void tryRestore();
    // Only a saved session found at load time is restored here.
  }, []);

  async function signOut() {
    await logout();
  }

  return (
    <div className="page">
      <header className="site-header">
        <h1>Portcullis</h1>
        {phase === "signed-in" && <Account key={sessionKey} onSignOut={signOut} notify={notify} />}
        {phase === "unreachable" && (
          <button type="button" className="secondary" onClick={() => void signOut()}>
            Sign out
          </button>
        )}
      </header>

      <Messages message={message} />

      {phase === "checking" && (
        <main>
          <p className="muted">Restoring your session…</p>
        </main>
      )}
      {phase === "unreachable" && (
        <main>
          <section className="card">
            <p>Your session could not be restored just now.</p>
            <button type="button" onClick={() => void tryRestore()}>
              Try again
            </button>
          </section>
        </main>
      )}
      {phase === "signed-out" && (
        <main>
          <AuthForm notify={notify} />
        </main>
      )}
      {phase === "signed-in" && <Dashboard key={sessionKey} notify={notify} />}
    </div>
  );
}

/**
 * Both live regions are always in the page, empty when there is nothing to
 * say, because screen readers only announce changes to regions they have
 * already seen.
 */
function Messages({ message }: { message: (Message & { seq: number }) | null }) {
  return (
    <div className="messages" data-testid="messages">
      <p role="status" aria-live="polite" className={message?.kind === "info" ? "message info" : "message"}>
        {message?.kind === "info" && <span key={message.seq}>{message.text}</span>}
      </p>
      <p role="alert" className={message?.kind === "error" ? "message error" : "message"}>
        {message?.kind === "error" && <span key={message.seq}>{message.text}</span>}
      </p>
    </div>
  );
}

function Account({ onSignOut, notify }: { onSignOut: () => Promise<void>; notify: (m: Message) => void }) {
  const [me, setMe] = useState<Me | null>(null);

  useEffect(() => {
    const controller = new AbortController();
    api<Me>("/api/auth/me", { signal: controller.signal })
      .then(setMe)
      .catch((error: unknown) => reportFailure(notify, error, "load", controller.signal));
    return () => controller.abort();
  }, [notify]);

  return (
    <div className="account">
      <span className="who">{me ? <>Signed in as <strong>{me.email}</strong></> : "Signed in"}</span>
      <button type="button" className="secondary" onClick={() => void onSignOut()}>
        Sign out
      </button>
    </div>
  );
}

const LIVE_TEXT: Record<LiveStatus, string> = {
  connecting: "Connecting live updates…",
  live: "Live updates on",
  reconnecting: "Live updates paused; reconnecting…",
  stopped: "Live updates off",
};

function Dashboard({ notify }: { notify: (m: Message) => void }) {
  const main = useRef<HTMLElement>(null);
  const [liveStatus, setLiveStatus] = useState<LiveStatus>("connecting");
  const listeners = useRef(new Set<(event: LiveEvent) => void>());
  const subscribe = useCallback<SubscribeLive>((listener) => {
    listeners.current.add(listener);
    return () => {
      listeners.current.delete(listener);
    };
  }, []);

  // One socket per signed-in page, closed when the session ends (the
  // dashboard is unmounted then).
  useEffect(() => {
    const live = connectLive({
      url: socketUrl("/api/notifications/ws"),
      token: socketToken,
      onEvent: (event) => listeners.current.forEach((listener) => listener(event)),
      onStatus: setLiveStatus,
    });
    return () => live.stop();
  }, []);

  useEffect(() => {
    // The sign-in form that had focus is gone; start keyboard users at the
    // top of their content instead of the top of the document.
    main.current?.focus();
  }, []);

  return (
    <main ref={main} tabIndex={-1} className="dashboard" aria-label="Your tasks and orders">
      <p className={`live-status ${liveStatus}`} data-testid="live-status">
        {LIVE_TEXT[liveStatus]}
      </p>
      <Tasks notify={notify} subscribe={subscribe} />
      <StockAndOrders notify={notify} subscribe={subscribe} />
    </main>
  );
}
