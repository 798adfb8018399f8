"""The worker's tuning, in one place and free of imports (the command line reads it cheaply)."""

# arq's poll reads at most queue_read_limit ids and then sleeps poll_delay: with its defaults
# (10 jobs, 0.5 s) a worker tops out near 200 jobs/s. These measured best on 2 cores.
MAX_JOBS = 100
POLL_DELAY = 0.01
# arq drops a job that outlives this (no retry), so each attempt gets a share of it; a killed
# worker's jobs run again this long plus 10 s later (arq's in-progress key).
JOB_TIMEOUT = 60.0
KEEP_RESULT = 24 * 3600  # a redelivery within a day stops at the queue; later ones at the database
TRIES = 10  # tries before a failing event is dead-lettered
# arq counts a try each time a job starts, killed runs included; it must never give up before
# our own policy has dead-lettered the event.
ARQ_MAX_TRIES = 1_000_000
# A batch waits this long (seconds) for more events before its transaction starts: a
# transaction costs about as much as ten events, so fuller batches pay for the wait.
BATCH_LINGER = 0.02
