"""The VINR sandbox: an emulator of VINR (contract sections 1-4) for tests, benchmarks and the demo.

Where things are (each import is cheap except `app` and `serving`, which pull in Starlette
and uvicorn):

- `config.SandboxConfig`: every knob, bad days included.
- `app.create_app(config) -> Starlette`: the REST API under `/v1` (request parameters read by
  `params`); the `Sandbox` that owns the world and webhook delivery is on `app.state.sandbox`.
- `sandbox.Sandbox`: `api_key`, `add_endpoint(...)`, `seed(...)`, `await deliveries_idle()`.
- `state.State`: the pure model and its lifecycle rules (`errors`, `ordered` for paging,
  `views` for the JSON it is shown as).
- `delivery`: signed webhook delivery, retries, bad days.
- `seeding.seed_invoices(state, count, ...)`: 100,000 invoices in seconds, for benchmarks.
- `serving.serve(app)` / `serving.serve_in_thread(app)`: uvicorn on a free loopback port.
- `commands`: `vinr-recon sandbox`.
"""
