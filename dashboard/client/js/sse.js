// EventSource wrapper: named-event handlers, the header's connection indicator, and a hook after a reconnect
// (views refetch once to fill any gap). EventSource itself retries and sends Last-Event-ID; when the browser gives
// up (a non-200 answer closes it for good) we reopen with ?lastEventId= after a growing delay.
import { $ } from "./dom.js";

const streams = new Set();

function renderIndicator() {
  const states = [...streams].map((s) => s.state);
  const state = states.includes("reconnecting") ? "reconnecting" : states.includes("connecting") ? "connecting" : states.length ? "live" : "idle";
  const el = $("#conn");
  el.dataset.state = state;
  el.lastElementChild.textContent = { live: "Live", reconnecting: "Reconnecting…", connecting: "Connecting", idle: "Idle" }[state];
}

/** openStream(url, {eventName: data => …}, {onReconnect}) → close(). Event data is parsed JSON. */
export function openStream(url, handlers, { onReconnect } = {}) {
  const stream = { state: "connecting", source: null, lastId: "", closed: false, delay: 1000, timer: 0, wasDown: false };
  streams.add(stream);

  const connect = () => {
    const sep = url.includes("?") ? "&" : "?";
    const src = new EventSource(stream.lastId ? `${url}${sep}lastEventId=${encodeURIComponent(stream.lastId)}` : url);
    stream.source = src;
    src.onopen = () => {
      stream.state = "live";
      stream.delay = 1000;
      renderIndicator();
      if (stream.wasDown) { stream.wasDown = false; onReconnect?.(); }
    };
    src.onerror = () => {
      stream.state = "reconnecting";
      stream.wasDown = true;
      renderIndicator();
      if (src.readyState === EventSource.CLOSED && !stream.closed) {
        stream.timer = setTimeout(connect, stream.delay);
        stream.delay = Math.min(stream.delay * 2, 30000);
      }
    };
    for (const [name, fn] of Object.entries(handlers)) {
      src.addEventListener(name, (e) => {
        if (e.lastEventId) stream.lastId = e.lastEventId;
        let data;
        try { data = JSON.parse(e.data); } catch { return; } // a malformed event is skipped, the stream goes on
        fn(data);
      });
    }
  };
  connect();
  renderIndicator();

  return () => {
    stream.closed = true;
    clearTimeout(stream.timer);
    stream.source?.close();
    streams.delete(stream);
    renderIndicator();
  };
}
