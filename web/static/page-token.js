/* The pages' shared sign-in step: a `?token=` in the URL is kept in sessionStorage under `key` and
 * scrubbed from the address bar (history, screenshots); without one, the stored token is used.
 * Returns {token, params} — `params` are the remaining query parameters. */
(function () {
  "use strict";
  globalThis.DocentPageToken = {
    take: function (key) {
      var params = new URLSearchParams(location.search);
      var token = params.get("token");
      try {
        if (token) sessionStorage.setItem(key, token);
        else token = sessionStorage.getItem(key);
      } catch (e) { /* storage blocked: the URL token still works for this load */ }
      if (params.has("token")) {
        params.delete("token");
        var query = params.toString();
        history.replaceState(null, "", location.pathname + (query ? "?" + query : "") + location.hash);
      }
      return {token: token, params: params};
    }
  };
})();
