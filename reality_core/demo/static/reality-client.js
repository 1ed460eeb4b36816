/**
 * reality-client.js — a small browser client of the Reality sync protocol. No dependencies;
 * an ES module you can copy into any app.
 *
 * Usage
 *
 *   import { RealityClient } from "/static/reality-client.js";
 *
 *   const reality = new RealityClient({ baseUrl: "/reality" });
 *   reality.subscribe(
 *     "room:general",                                          // the key the data hangs on
 *     () => fetch("/api/rooms/general/messages").then((r) => r.json()),   // how to read it
 *     (data, version) => render(data),                         // what to do with it
 *   );
 *   reality.start();            // listen to the page's events and sync once ("mount")
 *
 *   await fetch("/api/rooms/general/messages", { method: "POST", ... });
 *   await reality.afterMutation();   // see your own write at once
 *
 * When it syncs
 *
 *   Only when something happens: start() and subscribe() ("mount"), the window gaining focus
 *   or the page becoming visible ("focus"), clicks and key presses ("interaction", at most
 *   once per `interactionThrottleMs`), the browser coming back online ("reconnect"), and
 *   afterMutation() ("mutation"). There is no timer, no polling loop and no long-poll: each
 *   sync is one short POST {baseUrl}/sync with {"known": {key: version}, "hint": ...} that the
 *   server answers at once with the keys whose version differs.
 *
 * The read rule (DESIGN I9): the version is read BEFORE the data
 *
 *   For each key the server reports changed, the client first records the version from the
 *   sync response, then reads the data, and stores the data under that recorded version.
 *   The data was read after the version, so it is at least as new as the version says: if
 *   another write lands in between, the data may already include it, but the server's
 *   version has moved past the recorded one, so the next sync reports the key again and the
 *   data is read again. Nothing is ever missed.
 *
 *   The other order is a bug: read the data, then ask for the version, and a write that
 *   commits between the two leaves old data labelled with the new version — the client
 *   believes it is current and never reads that write.
 *
 *   A failed read stores nothing, so the key keeps its old version and the next sync
 *   reports it again.
 *
 * Epochs
 *
 *   Every response carries the version table's `epoch`. When it differs from the one the
 *   client saw before (the table was recreated, or the database restored from a backup, so
 *   versions may have gone backwards), the client drops every version it knows and reads
 *   every subscribed key again.
 */

const DEFAULT_THROTTLE_MS = 2000;
const COALESCE_MS = 1000;

/** An error from the sync endpoint (an RFC 9457 problem) or from the network. */
export class RealitySyncError extends Error {
  constructor(message, { status = 0, code = "network", retryAfter = 0 } = {}) {
    super(message);
    this.name = "RealitySyncError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export class RealityClient {
  #baseUrl;
  #fetch;
  #throttleMs;
  #clientId;
  #onSync;
  #onError;
  /** key -> {load, onData}: what the page shows. */
  #subs = new Map();
  /** key -> the version of the data the page holds for it (absent: never loaded). */
  #versions = new Map();
  #epoch = null;
  #running = null;
  #queuedHint = null;
  #lastInteraction = -Infinity;
  #notBefore = 0;
  #sentAt = -Infinity;
  #started = false;

  /**
   * @param {object} options
   * @param {string} [options.baseUrl="/reality"] where the sync endpoint is mounted
   * @param {number} [options.interactionThrottleMs=2000] at most one "interaction" sync per
   *   this many milliseconds
   * @param {(info: object) => void} [options.onSync] called after each completed sync
   *   with {hint, known, changed, loaded, epoch, serverTime}
   * @param {(error: Error) => void} [options.onError] called when a sync or a read fails
   *   (the next event retries; nothing is scheduled)
   * @param {typeof fetch} [options.fetch] the fetch to use
   */
  constructor({
    baseUrl = "/reality",
    interactionThrottleMs = DEFAULT_THROTTLE_MS,
    onSync = null,
    onError = null,
    fetch: fetchImpl = globalThis.fetch.bind(globalThis),
    clientId = randomId(),
  } = {}) {
    this.#baseUrl = baseUrl.replace(/\/+$/, "");
    this.#throttleMs = interactionThrottleMs;
    this.#onSync = onSync;
    this.#onError = onError;
    this.#fetch = fetchImpl;
    this.#clientId = clientId;
  }

  /**
   * Show `key`: `load()` reads its data (returns a promise), `onData(data, version, key)`
   * receives it each time the key changes. One subscription per key; subscribing again
   * replaces it. Returns a function that unsubscribes.
   */
  subscribe(key, load, onData) {
    const sub = { load, onData };
    this.#subs.set(key, sub);
    this.#versions.delete(key);
    if (this.#started) this.sync("mount");
    return () => {
      if (this.#subs.get(key) === sub) {
        this.#subs.delete(key);
        this.#versions.delete(key);
      }
    };
  }

  /** The version of the data held for `key`, or undefined if it was never loaded. */
  version(key) {
    return this.#versions.get(key);
  }

  /** Start listening to the page's events, and sync once. */
  start() {
    if (this.#started) return this.#running ?? Promise.resolve();
    this.#started = true;
    window.addEventListener("focus", this.#onFocus);
    document.addEventListener("visibilitychange", this.#onVisibility);
    document.addEventListener("click", this.#onInteraction, { capture: true, passive: true });
    document.addEventListener("keydown", this.#onInteraction, { capture: true, passive: true });
    window.addEventListener("online", this.#onOnline);
    return this.sync("mount");
  }

  /** Stop listening (syncs already running finish). */
  stop() {
    this.#started = false;
    window.removeEventListener("focus", this.#onFocus);
    document.removeEventListener("visibilitychange", this.#onVisibility);
    document.removeEventListener("click", this.#onInteraction, { capture: true });
    document.removeEventListener("keydown", this.#onInteraction, { capture: true });
    window.removeEventListener("online", this.#onOnline);
  }

  /** Call right after your own write succeeded: syncs now, so the page shows it. */
  afterMutation() {
    return this.sync("mutation");
  }

  /**
   * Sync now. Resolves when done (errors go to onError, never reject).
   *
   * While a sync is in flight, a "mutation" always runs once more after it: the request in
   * flight may have been answered before our write committed. Other hints only ask
   * "anything new?"; a request sent less than a second ago is asking that already, so they
   * are folded into it (a focus and a click from the same gesture make one request).
   */
  sync(hint = "interaction") {
    if (this.#running) {
      if (hint === "mutation" || Date.now() - this.#sentAt >= COALESCE_MS) {
        if (this.#queuedHint !== "mutation") this.#queuedHint = hint;
      }
      return this.#running;
    }
    this.#running = this.#drain(hint).finally(() => {
      this.#running = null;
    });
    return this.#running;
  }

  #onFocus = () => this.sync("focus");

  #onVisibility = () => {
    if (document.visibilityState === "visible") this.sync("focus");
  };

  #onOnline = () => this.sync("reconnect");

  #onInteraction = () => {
    const now = Date.now();
    if (now - this.#lastInteraction < this.#throttleMs) return;
    this.#lastInteraction = now;
    this.sync("interaction");
  };

  async #drain(hint) {
    let next = hint;
    while (next !== null) {
      this.#queuedHint = null;
      await this.#syncOnce(next);
      next = this.#queuedHint;
    }
  }

  async #syncOnce(hint) {
    // A 503 asked us to come back after Retry-After; only our own writes may not wait.
    if (hint !== "mutation" && Date.now() < this.#notBefore) return;
    const subs = new Map(this.#subs);
    if (subs.size === 0) return;
    // No prototype: a key such as "__proto__" or "constructor" is just a key.
    const known = Object.create(null);
    for (const key of subs.keys()) known[key] = this.#versions.get(key) ?? 0;

    let response;
    this.#sentAt = Date.now();
    try {
      response = await this.#post({
        known, hint, clientId: this.#clientId, mode: "native", timestamp: Date.now(),
      });
    } catch (error) {
      this.#report(error);
      return;
    }
    const changed = response.changed ?? {};

    // A new epoch: every version we hold belongs to a table that no longer exists. Forget
    // them all, so every subscribed key is read again below. The response itself is valid
    // for the new epoch: a key absent from "changed" has, on the server's current table,
    // exactly the version we sent.
    if (this.#epoch !== null && response.epoch !== this.#epoch) this.#versions.clear();
    this.#epoch = response.epoch;

    // Read rule, step 1: fix the version each stale key will carry, from this response,
    // BEFORE any data is read. A key never loaded (or forgotten) takes the version the
    // server just confirmed: the one we sent, unless it is in "changed".
    const stale = [];
    for (const [key, sub] of subs) {
      if (Object.hasOwn(changed, key)) stale.push({ key, sub, version: changed[key].version });
      else if (!this.#versions.has(key)) stale.push({ key, sub, version: known[key] });
    }

    // Read rule, step 2: only now read the data, and store it under the version from
    // step 1 — never under a version learned after the read.
    const results = await Promise.allSettled(stale.map(async ({ key, sub, version }) => {
      const data = await sub.load(key);
      if (this.#subs.get(key) !== sub) return; // unsubscribed while loading: drop it
      this.#versions.set(key, version);
      sub.onData(data, version, key);
    }));
    for (const result of results) {
      if (result.status === "rejected") this.#report(result.reason);
    }
    if (this.#onSync) {
      this.#onSync({
        hint, known, changed: Object.keys(changed), loaded: stale.map((s) => s.key),
        epoch: response.epoch, serverTime: response.serverTime,
      });
    }
  }

  async #post(request) {
    let res;
    try {
      res = await this.#fetch(`${this.#baseUrl}/sync`, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify(request),
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (error) {
      throw new RealitySyncError(`sync failed: ${error.message ?? error}`);
    }
    if (res.ok) return res.json();
    let problem = {};
    try {
      problem = await res.json();
    } catch {
      // not a problem document; the status says enough
    }
    const retryAfter = Number(res.headers.get("retry-after")) || 0;
    if (res.status === 503 && retryAfter > 0) this.#notBefore = Date.now() + retryAfter * 1000;
    throw new RealitySyncError(problem.detail ?? `sync failed with HTTP ${res.status}`, {
      status: res.status, code: problem.code ?? "http_error", retryAfter,
    });
  }

  #report(error) {
    if (this.#onError) this.#onError(error);
    else console.warn("reality:", error);
  }
}

function randomId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return `c-${Math.random().toString(36).slice(2)}${Date.now().toString(36)}`;
}
