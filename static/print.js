// The consent certificate's print button. A file from our own origin, as the CSP requires
// (script-src 'self'); without it the button stays hidden and the page says how to print.
document.querySelectorAll("[data-print]").forEach(function (button) {
  button.hidden = false;
  button.addEventListener("click", function () {
    window.print();
  });
});
