window.onerror = (msg) => {
  (document.body || document.documentElement).dataset.jserror = String(msg); };
