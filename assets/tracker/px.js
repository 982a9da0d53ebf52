/*! pixeld px.js (Apache-2.0); source: assets/tracker/px.js in pixeld */
/* Pageviews, engaged time and events for pixeld; served minified as px.min.js (make it
 * with scripts/build-px after any change: a test compares).
 * <script defer src="https://stats.example.com/px.js"></script>
 * Attributes (all optional): data-endpoint="URL of p.gif" (default: p.gif beside this file),
 * data-heartbeat="10" (seconds), data-hash (count #fragment changes as pages),
 * data-vid="local" (a random id in localStorage; default: none, pixeld derives one that
 * changes daily), data-respect-dnt (send nothing under Do Not Track or Global Privacy
 * Control), data-outbound, data-downloads[="pdf,zip,…"].
 * API: px('signup', {plan: 'pro'}) sends an event; px('pageview') a pageview (for routers
 * this script does not see). Calls made before it loads are kept by the stub
 * window.px = window.px || function () { (px.q = px.q || []).push(arguments) }.
 * No cookies, no console output, never throws, nothing synchronous. */
(function (w, d) {
  'use strict';
  var queued = (w.px && w.px.q) || [];
  w.px = function () {};
  try {
    var n = w.navigator || {}, loc = w.location;
    var s = d.currentScript || d.querySelector('script[src*="px."][src$=".js"]');
    var attr = function (k) { return s ? s.getAttribute('data-' + k) : null; };
    var has = function (k) { return attr(k) !== null; };
    if (has('respect-dnt') &&
        (n.doNotTrack == '1' || w.doNotTrack == '1' || n.globalPrivacyControl)) return;
    var endpoint = attr('endpoint') ||
      (s && s.src ? s.src.replace(/[?#].*$/, '').replace(/[^\/]*$/, 'p.gif') : '/p.gif');
    var beat = Math.max(1, Math.min(3600, +attr('heartbeat') || 10));
    var hashes = has('hash');
    var enc = encodeURIComponent;
    var now = function () { return new Date().getTime(); };
    var safe = function (f) {
      return function () { try { return f.apply(this, arguments); } catch (e) {} };
    };
    var on = function (t, ev, f, opt) {
      if (t.addEventListener) t.addEventListener(ev, safe(f), opt || false);
    };

    var vid = '';
    if (attr('vid') == 'local') {
      try {
        var st = w.localStorage;
        vid = st.getItem('px_vid') || '';
        if (!vid) {
          var r = new Uint8Array(8), c = w.crypto;
          if (c && c.getRandomValues) c.getRandomValues(r);
          else for (var i = 0; i < 8; i++) r[i] = Math.random() * 256;
          for (i = 0; i < 8; i++) vid += (r[i] + 256).toString(16).slice(1);
          st.setItem('px_vid', vid);
        }
      } catch (e) { vid = ''; }
    }

    // One hit: a beacon (it survives the page closing), else fetch with keepalive, else an
    // image. Failures are ignored quietly: analytics never disturb the page.
    var send = function (q) {
      var u = endpoint + '?' + q + (vid ? '&vid=' + enc(vid) : '');
      try { if (n.sendBeacon && n.sendBeacon(u)) return; } catch (e) {}
      try {
        if (w.fetch) {
          w.fetch(u, { keepalive: true, mode: 'no-cors', credentials: 'omit' })['catch'](function () {});
          return;
        }
      } catch (e) {}
      new Image().src = u;
    };

    // Engaged time (Parse.ly's definition): the page is visible and the reader interacted
    // within the last 5 s, or a video or audio element is playing. Counted in 1 s ticks,
    // reported every `beat` seconds when there is any, and on leaving the page.
    var url = null, active = 0, acc = 0, ticks = 0, last = now();
    var visible = function () { return !d.visibilityState ? !d.hidden : d.visibilityState == 'visible'; };
    var playing = function () {
      var m = d.querySelectorAll ? d.querySelectorAll('video,audio') : [];
      for (var i = 0; i < m.length; i++) if (!m[i].paused && !m[i].ended) return true;
      return false;
    };
    var account = function () {
      var t = now(), dt = t - last;
      last = t;
      // A gap longer than a few ticks is a frozen or sleeping tab, never engagement.
      if (dt > 0 && dt <= 3000 && visible() && (t - active < 5000 || playing())) acc += dt;
    };
    var flush = function () {
      account();
      ticks = 0;
      var sec = Math.floor(acc / 1000);
      if (sec > 0 && url) {
        acc -= sec * 1000;
        send('a=hb&inc=' + sec + '&url=' + enc(url));
      }
    };
    var here = function () { return hashes ? loc.href : loc.href.replace(/#.*$/, ''); };
    // A pageview of the current url, unless it is the one already counted. Its referrer is
    // the page's for the first, the previous in-app url for the next (SPA navigations).
    var pageview = function () {
      var u = here();
      if (u === url) return;
      if (url) flush();
      acc = 0;
      var ref = url === null ? d.referrer : url;
      url = u;
      send('a=pv&url=' + enc(u) + (ref ? '&ref=' + enc(ref) : ''));
    };
    var event = function (name, props) {
      send('a=event&n=' + enc(name) + '&url=' + enc(url || here()) +
        (props && w.JSON ? '&p=' + enc(JSON.stringify(props)) : ''));
    };

    var start = function () {
      pageview();
      var h = w.history;
      if (h && h.pushState) {
        var wrap = function (k) {
          var orig = h[k];
          h[k] = function () {
            var r = orig.apply(this, arguments);
            safe(pageview)();
            return r;
          };
        };
        wrap('pushState');
        wrap('replaceState');
        on(w, 'popstate', pageview);
      }
      if (hashes) on(w, 'hashchange', pageview);
      var mark = function () { active = now(); };
      var kinds = ['mousemove', 'mousedown', 'keydown', 'scroll', 'wheel', 'touchstart', 'click'];
      for (var i = 0; i < kinds.length; i++) on(d, kinds[i], mark, { capture: true, passive: true });
      on(d, 'visibilitychange', function () {
        if (visible()) last = now(); else flush();
      });
      on(w, 'pagehide', flush);
      w.setInterval(safe(function () {
        account();
        if (++ticks >= beat) flush();
      }), 1000);

      var out = has('outbound'), dl = attr('downloads');
      var exts = new RegExp('\\.(' + (dl ? dl.replace(/[^a-z0-9,]/gi, '').split(',').join('|')
        : 'pdf|zip|gz|dmg|exe|msi|csv|xlsx?|docx?|pptx?|mp3|mp4|epub') + ')$', 'i');
      if (out || dl !== null) {
        on(d, 'click', function (e) {
          var a = e.target;
          while (a && a.nodeName != 'A') a = a.parentNode;
          if (!a || !a.href || !/^https?:/.test(a.href)) return;
          if (dl !== null && exts.test(a.href.replace(/[?#].*$/, ''))) event('download', { url: a.href });
          else if (out && a.host && a.host != loc.host) event('outbound', { url: a.href });
        }, true);
      }
    };

    w.px = safe(function (name, props) {
      if (name == 'pageview') pageview(); else if (name) event(String(name), props);
    });
    if (d.prerendering) on(d, 'prerenderingchange', start, { once: true });
    else start();
    for (var k = 0; k < queued.length; k++) w.px.apply(w, queued[k]);
  } catch (e) {}
})(window, document);
