"""`vinr-recon queue convert`: the earlier version's pickled jobs in the data-only format."""

from __future__ import annotations

import argparse
import asyncio

from vinr_recon.settings import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = subparsers.add_parser("queue", help="maintain this installation's queue (QUEUE_NAME) in Redis")
    commands = queue.add_subparsers(dest="queue_command", metavar="COMMAND", required=True)
    convert = commands.add_parser(
        "convert", help="once after upgrading: rewrite the jobs an earlier version pickled as data-only jobs",
        description="Rewrite the pickled jobs of the queue in the data-only format, and queue again those a "
                    "worker refused. Only plain data is read from a pickle; one that holds anything else is "
                    "left as it is and named. Run it when no process of the earlier version is left.")
    convert.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_convert(settings))


async def _convert(settings: Settings) -> int:
    from vinr_recon.convert import convert_queue
    from vinr_recon.redis_connect import redis_for

    redis = redis_for(settings)
    try:
        done = await convert_queue(redis, settings.queue_name)
    finally:
        await redis.aclose()
    print(f"queue {settings.queue_name}: {len(done.converted)} queued jobs converted, "
          f"{len(done.requeued)} refused jobs converted and queued again, "
          f"{len(done.dropped)} refused jobs already queued or done again, {len(done.refused)} not plain data")
    for job_id, why in done.refused:
        print(f"not converted: {job_id} ({why}); a worker refuses it and keeps it aside")
    for job_id in done.held:
        print(f"not converted yet: {job_id} is in a worker's hands; run `vinr-recon queue convert` again later")
    return 1 if done.refused or done.held else 0
