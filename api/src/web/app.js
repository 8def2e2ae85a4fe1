// kurz web app: progressive enhancement only. Every page works without this file; with it, the
// copy buttons (hidden until this runs) put a short URL on the clipboard.
"use strict";
// Browsers give pages the clipboard over HTTPS and on localhost only: elsewhere (plain HTTP on a
// LAN address) a shown button would do nothing, so they stay hidden.
if (navigator.clipboard) {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", () => {
      navigator.clipboard.writeText(button.dataset.copy).then(
        () => { button.textContent = "Copied"; },
        () => { button.textContent = "Select and copy the link"; },
      );
    });
  }
}
