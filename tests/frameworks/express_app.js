// An Express 4 application standing in for a real API behind the gateway in the tests.
//
// Its routes are Express's own router (case-insensitive by default, and matching the path
// as sent, percent-escapes included), so a test sees which handler the framework ran for a
// request, not an echo of the path. Every handler counts its runs; `GET /_runs` (asked
// directly, not through the gateway) returns the counts, `POST /_reset` clears them.
//
//     node express_app.js PORT        (with NODE_PATH pointing at express)

const express = require("express");

const app = express();
const runs = {};

function ran(view) {
  return (req, res) => {
    runs[view] = (runs[view] || 0) + 1;
    res.json({
      view,
      method: req.method,
      path: req.path,
      url: req.originalUrl,
      host: req.headers.host || null,
      api_keys: req.headersDistinct ? req.headersDistinct["x-api-key"] || [] : [],
    });
  };
}

app.get("/healthz", ran("health"));
app.post("/login", ran("login"));
app.get("/api/items/:id", ran("items"));
app.all("/api/orders", ran("orders"));
app.get("/_runs", (req, res) => res.json(runs));
app.post("/_reset", (req, res) => {
  for (const k of Object.keys(runs)) delete runs[k];
  res.json({ reset: true });
});

app.listen(Number(process.argv[2]), "127.0.0.1");
