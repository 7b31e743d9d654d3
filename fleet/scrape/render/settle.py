"""What runs in a rendered page: the tracker of what its text may still wait for, the
settle condition the pool waits on, and the read of its HTML (``BrowserPool`` uses them).
"""

from __future__ import annotations

from typing import Final

# The DOM's quiet window: what settling gives the sources it does not count (observer
# callbacks run in the next frame, ~16 ms). Was 100 ms before idle callbacks, messages and
# body reads were counted; 50 keeps ~3 frames of margin and shortens every render.
DOM_QUIET_MS: Final = 50


# Settling: the DOM quiet for ``quietMs`` while nothing the page's text may still wait for
# is pending (counted in the page by TRACKER_JS): fetch()/XHR calls, script loads, dynamic
# import()s, and short timers and animation frames, those due within ``timerMaxMs`` of the
# settle's start (a clock ticking forever holds it that long at most). Promise chains run
# in microtasks, before any timer: what they wait on is one of the above. A page without
# the tracker, as in the benchmark's bare loop, waits for the DOM alone. Counted in the
# page, not through Playwright's request events: those cost three messages per request
# between Chromium, the driver and Python, about 2 ms of the worker's CPU per page
# (measured). The settle's own timers are the browser's, not the tracked ones.
SETTLE_JS: Final = """
([quietMs, timerMaxMs]) => new Promise((resolve) => {
  const native = window.__fleetNative || {setTimeout, clearTimeout};
  const later = (fn, ms) => native.setTimeout.call(window, fn, ms);
  const cancel = (id) => native.clearTimeout.call(window, id);
  const until = performance.now() + timerMaxMs;
  const busy = window.__fleetBusy || (() => 0);
  let timer = later(done, quietMs);
  const observer = new MutationObserver(() => {
    cancel(timer);
    timer = later(done, quietMs);
  });
  observer.observe(document, {subtree: true, childList: true, characterData: true});
  function done() {
    if (busy(until) > 0) { timer = later(done, quietMs); return; }
    observer.disconnect();
    resolve(true);
  }
})
"""


# Short timers and frames count while they are due within this of the settle's start.
TIMER_MAX_MS: Final = 2000


# Runs in every document before its own scripts: counts what a page's text may still wait
# for after the load event. Network: fetch()/XHR calls and their body reads, external
# scripts added after load (a dynamic import() cannot be wrapped in the page: the proxy
# counts those, see ``BrowserProxy.loading``). Tasks: setTimeout/setInterval callbacks,
# animation frames and idle callbacks, each with the time it is due, and posted messages
# (MessageChannel, window.postMessage) for a moment after each post. Images, styles and
# WebSockets are not counted: text does not wait for them.
TRACKER_JS: Final = r"""
(() => {
  const POSTED_MS = 50;  // see "Messages" below
  if (Object.prototype.hasOwnProperty.call(window, '__fleetBusy')) return;
  const hide = (name, value) => Object.defineProperty(window, name, {value});
  const native = {
    setTimeout: window.setTimeout, clearTimeout: window.clearTimeout,
    setInterval: window.setInterval, clearInterval: window.clearInterval,
    requestAnimationFrame: window.requestAnimationFrame,
    cancelAnimationFrame: window.cancelAnimationFrame,
  };
  hide('__fleetNative', native);
  // The HTML as page.content() gives it, with the built-ins taken before the page's own
  // scripts could replace them (see PAGE_HTML_JS).
  const Serializer = window.XMLSerializer, serialize = Serializer.prototype.serializeToString;
  const outerHTML = Object.getOwnPropertyDescriptor(Element.prototype, 'outerHTML').get;
  hide('__fleetHtml', () => {
    const doctype = document.doctype, root = document.documentElement;
    return (doctype ? serialize.call(new Serializer(), doctype) : '') +
      (root ? outerHTML.call(root) : '');
  });
  let pending = 0;
  const done = () => { pending = Math.max(0, pending - 1); };
  const due = new Map();  // timer or frame key -> when it is due (performance.now())
  hide('__fleetBusy', (until) => {
    let n = pending;
    for (const at of due.values()) if (at <= until) n++;
    return n;
  });
  // A call returning a promise, counted until it settles.
  const counted = (call) => function (...args) {
    pending++;
    let result;
    try { result = call.apply(this, args); } catch (e) { done(); throw e; }
    Promise.resolve(result).then(done, done);
    return result;
  };
  if (typeof window.fetch === 'function') window.fetch = counted(window.fetch);
  const XHR = window.XMLHttpRequest;
  if (XHR) {
    const send0 = XHR.prototype.send;
    XHR.prototype.send = function send(...args) {
      pending++;
      this.addEventListener('loadend', done, {once: true});
      try { return send0.apply(this, args); } catch (e) { done(); throw e; }
    };
  }
  const delayOf = (ms) => Math.max(0, Number(ms) || 0);
  window.setTimeout = function setTimeout(fn, ms, ...rest) {
    if (typeof fn !== 'function') return native.setTimeout.call(window, fn, ms, ...rest);
    let id;
    const run = function (...a) { due.delete('t' + id); return fn.apply(this, a); };
    id = native.setTimeout.call(window, run, ms, ...rest);
    due.set('t' + id, performance.now() + delayOf(ms));
    return id;
  };
  window.clearTimeout = function clearTimeout(id) {
    due.delete('t' + id);
    return native.clearTimeout.call(window, id);
  };
  window.setInterval = function setInterval(fn, ms, ...rest) {
    if (typeof fn !== 'function') return native.setInterval.call(window, fn, ms, ...rest);
    let id;
    const every = delayOf(ms);
    const run = function (...a) {
      due.set('i' + id, performance.now() + every);  // the next tick
      return fn.apply(this, a);
    };
    id = native.setInterval.call(window, run, ms, ...rest);
    due.set('i' + id, performance.now() + every);
    return id;
  };
  window.clearInterval = function clearInterval(id) {
    due.delete('i' + id);
    return native.clearInterval.call(window, id);
  };
  // A fetch() resolves with the headers; the text waits for the body read after it.
  const body = window.Response && window.Response.prototype;
  if (body) for (const name of ['text', 'json', 'arrayBuffer', 'blob', 'formData']) {
    if (typeof body[name] === 'function') body[name] = counted(body[name]);
  }
  // Messages: schedulers (React's among them) run their work in message tasks, each
  // posting the next; a post counts for POSTED_MS, long enough to bridge to the next one.
  let posts = 0;
  const posted = () => {
    const key = 'm' + (++posts);
    due.set(key, performance.now());
    native.setTimeout.call(window, () => due.delete(key), POSTED_MS);
  };
  const wrapPost = (proto) => {
    const post0 = proto && proto.postMessage;
    if (typeof post0 !== 'function') return;
    proto.postMessage = function postMessage(...args) { posted(); return post0.apply(this, args); };
  };
  wrapPost(window.MessagePort && window.MessagePort.prototype);
  const windowPost0 = window.postMessage;
  window.postMessage = function postMessage(...args) {
    posted();
    return windowPost0.apply(this, args);
  };
  if (typeof window.requestIdleCallback === 'function') {
    const idle0 = window.requestIdleCallback, cancelIdle0 = window.cancelIdleCallback;
    window.requestIdleCallback = function requestIdleCallback(fn, ...rest) {
      let id;
      const run = (deadline) => { due.delete('d' + id); return fn(deadline); };
      id = idle0.call(window, run, ...rest);
      due.set('d' + id, performance.now());
      return id;
    };
    window.cancelIdleCallback = function cancelIdleCallback(id) {
      due.delete('d' + id);
      return cancelIdle0.call(window, id);
    };
  }
  if (typeof native.requestAnimationFrame === 'function') {
    window.requestAnimationFrame = function requestAnimationFrame(fn) {
      let id;
      id = native.requestAnimationFrame.call(window, (t) => { due.delete('f' + id); fn(t); });
      due.set('f' + id, performance.now());
      return id;
    };
    window.cancelAnimationFrame = function cancelAnimationFrame(id) {
      due.delete('f' + id);
      return native.cancelAnimationFrame.call(window, id);
    };
  }
  const JS = /^(|module|(text|application)\/(x-)?(java|ecma)script)$/i;
  // Only scripts added after the load event: earlier ones hold the load event back
  // (goto waits for it), and a listener added to those could come after their own load.
  const track = (node) => {
    if (document.readyState !== 'complete') return;
    if (node.nodeName !== 'SCRIPT' || !node.src || node.noModule) return;
    if (!JS.test((node.type || '').trim())) return;
    pending++;
    let once = false;
    const end = () => { if (!once) { once = true; done(); } };
    node.addEventListener('load', end);
    node.addEventListener('error', end);
  };
  new MutationObserver((records) => {
    for (const record of records) for (const node of record.addedNodes) track(node);
  }).observe(document, {subtree: true, childList: true});
})();
"""


# The rendered HTML, read in the page's own world by TRACKER_JS's helper: Playwright's
# page.content() evaluates in a second (utility) world, set up anew after each navigation
# for its first use: ~30 ms per page (measured), against ~3 ms here. Where the helper is
# missing (a document the init script did not reach), content() it is.
PAGE_HTML_JS: Final = "() => typeof window.__fleetHtml === 'function' ? window.__fleetHtml() : null"
