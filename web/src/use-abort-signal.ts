import { useCallback, useEffect, useRef } from "react";

/**
 * Gives a component an AbortSignal that fires when the component unmounts.
 *
 * Private sections pass it to every request, so that signing out (which
 * unmounts them) also cancels their requests in flight: no answer can arrive
 * afterwards and put private data back into memory. A getter is returned
 * because the controller is created in an effect, which keeps it correct
 * when React mounts, unmounts and mounts again in development.
 */
export function useAbortSignal(): () => AbortSignal {
  const controller = useRef<AbortController | null>(null);
  useEffect(() => {
    const current = new AbortController();
    controller.current = current;
    return () => current.abort();
  }, []);
  return useCallback(() => controller.current?.signal ?? new AbortController().signal, []);
}
