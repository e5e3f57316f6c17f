// Starts Swagger UI on /api/docs (a file, not an inline script: the CSP allows scripts from 'self' only).
(function () {
  "use strict";
  var root = document.getElementById("api-docs");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    persistAuthorization: false,
    tryItOutEnabled: false,
  });
})();
