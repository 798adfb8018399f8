"""vinr_recon.logging: in JSON an exception is a structured field (its stacks, without the frames'
local variables), from structlog and from standard-library loggers alike; the console keeps the
usual traceback."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from vinr_recon.logging import configure_logging


def fail_with_a_secret_nearby() -> None:
    password = "hunter2-in-a-local"  # noqa: F841 - what a traceback's locals would show
    try:
        {}["missing"]
    except KeyError as exc:
        raise ValueError("the ledger refused it") from exc


@pytest.mark.parametrize("logger", ["structlog", "stdlib"])
def test_an_exception_in_json_is_fields_a_log_search_can_query(log_capture, logger):
    try:
        fail_with_a_secret_nearby()
    except ValueError:
        if logger == "structlog":
            structlog.get_logger("test").exception("it failed", invoice_id="inv_1")
        else:
            logging.getLogger("arq.worker").exception("it failed")
    (line,) = [line for line in log_capture.lines() if line["event"] == "it failed"]
    raised, cause = line["exception"]
    assert (raised["exc_type"], raised["exc_value"], raised["is_cause"]) == \
        ("ValueError", "the ledger refused it", False)
    assert (cause["exc_type"], cause["exc_value"], cause["is_cause"]) == ("KeyError", "'missing'", True)
    assert raised["frames"][-1]["name"] == "fail_with_a_secret_nearby" and raised["frames"][-1]["lineno"] > 0
    assert all("locals" not in frame for stack in line["exception"] for frame in stack["frames"])
    assert "hunter2" not in log_capture.text()


def test_the_console_keeps_the_usual_traceback(capsys):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    try:
        configure_logging("INFO", json=False)
        try:
            fail_with_a_secret_nearby()
        except ValueError:
            structlog.get_logger("test").exception("it failed")
    finally:
        root.handlers[:], _, config = saved
        root.setLevel(saved[1])
        structlog.configure(**config)
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: the ledger refused it" in err
    assert "The above exception was the direct cause" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])
