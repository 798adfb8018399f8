"""`vinr-recon demo`: the seed guide's story end to end on this machine, with a report.

- `commands`: the subcommand (cheap to import).
- `run`: the orchestration: a temporary folder, the parts as real processes, the story, the report.
- `processes`: child processes in their own process groups, logs to files, stopped for sure.
- `services`: Redis (REDIS_URL, a private `redis-server`, or an in-process emulation) and the
  mailbox that receives the alert emails, chat messages and fulfilment callbacks.
- `story`: what happens at VINR, through the sandbox's REST API.
- `report`: what a finance person reads, printed with Rich.
"""
