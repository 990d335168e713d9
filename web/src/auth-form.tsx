import { useId, useRef, useState, type FormEvent } from "react";
import { login, register } from "./api";
import { describeError, type Notify } from "./messages";

/**
 * One form for both signing in and registering: the same two fields, and
 * the button pressed decides which. Enter submits with the first button,
 * "Sign in", which is what a returning user wants.
 */
export function AuthForm({ notify }: { notify: Notify }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);
  // A ref as well as state, so a second Enter before the re-render is ignored.
  const inFlight = useRef(false);
  const emailId = useId();
  const passwordId = useId();
  const hintId = useId();

  async function submit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    if (inFlight.current) return;
    const submitter = (event.nativeEvent as SubmitEvent).submitter;
    const action = submitter?.dataset.action === "register" ? "register" : "login";
    inFlight.current = true;
    setBusy(true);
    try {
      if (action === "register") await register(email.trim(), password);
      else await login(email.trim(), password);
      // The session event swaps this form for the signed-in page; the
      // password is cleared anyway so it does not linger in memory.
      setPassword("");
      notify({ kind: "info", text: action === "register" ? "Account created; you are signed in." : "Signed in." });
    } catch (error) {
      notify({ kind: "error", text: describeError(error, action) });
    } finally {
      inFlight.current = false;
      setBusy(false);
    }
  }

  return (
    <section className="card auth" aria-labelledby="auth-heading">
      <h2 id="auth-heading">Sign in or register</h2>
      {/* noValidate: the server's rules and messages are the ones shown, in
          the page's own message area, rather than the browser's bubbles. */}
      <form onSubmit={submit} noValidate aria-busy={busy}>
        <div className="field">
          <label htmlFor={emailId}>Email</label>
          <input
            id={emailId}
            type="email"
            autoComplete="username"
            inputMode="email"
            autoCapitalize="none"
            spellCheck={false}
            value={email}
            onChange={(e) => setEmail(e.target.value)}
            required
            autoFocus
          />
        </div>
        <div className="field">
          <label htmlFor={passwordId}>Password</label>
          <input
            id={passwordId}
            type="password"
            autoComplete="current-password"
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            aria-describedby={hintId}
            required
          />
          <p id={hintId} className="hint">
            At least 8 characters.
          </p>
        </div>
        <div className="actions">
          <button type="submit" data-action="login" aria-disabled={busy}>
            Sign in
          </button>
          <button type="submit" data-action="register" className="secondary" aria-disabled={busy}>
            Register
          </button>
        </div>
      </form>
    </section>
  );
}
