"""hivemind's notices that are not news: dropped, shortened or ignored by hivedata.train.quiet, nothing else."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest
from hivemind.averaging.partition import AllreduceException

from hivedata.train.quiet import FailedRoundFilter, OrphanedRequestFilter, quiet_hivemind


def record(func: str, exc: BaseException | None, level: int = logging.ERROR) -> logging.LogRecord:
    """A record as hivemind's logger.exception(e) makes it inside `func`."""
    info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("hivemind.x", level, "x.py", 1, exc, (), info, func=func)


def _run(logger: logging.Logger) -> None:
    """Logs a lost sender's request as hivemind's DHT loop (a function named _run) does."""
    try:
        raise FileNotFoundError(2, "No such file or directory")
    except FileNotFoundError as e:
        logger.exception(e)


def test_a_request_from_an_exited_sender_is_dropped_and_nothing_else():
    f = OrphanedRequestFilter()
    assert f.filter(record("_run", FileNotFoundError(2, "No such file or directory"))) is False
    assert f.filter(record("_run", ConnectionRefusedError())) is False
    assert f.filter(record("_run", ValueError("a real bug"))) is True  # another error in the same loop is kept
    assert f.filter(record("store", FileNotFoundError())) is True  # the same error elsewhere is kept
    assert f.filter(record("_run", None, logging.INFO)) is True


def test_a_failed_round_becomes_one_warning_line_and_other_errors_keep_their_traceback():
    failed = record("_step", AllreduceException("Averaging step failed: could not find a group"))
    assert FailedRoundFilter().filter(failed) is True
    assert failed.levelno == logging.WARNING and failed.exc_info is None
    assert failed.getMessage() == ("averaging round failed (this step used local gradients): "
                                   "Averaging step failed: could not find a group")
    other = record("_step", KeyError("bug"))
    assert FailedRoundFilter().filter(other) is True and other.levelno == logging.ERROR and other.exc_info


def test_installed_on_hiveminds_loggers_once(capsys):
    quiet_hivemind()
    quiet_hivemind()
    dht_log, averager_log = logging.getLogger("hivemind.dht.dht"), logging.getLogger("hivemind.averaging.averager")
    assert sum(isinstance(f, OrphanedRequestFilter) for f in dht_log.filters) == 1
    assert sum(isinstance(f, FailedRoundFilter) for f in averager_log.filters) == 1
    handler = logging.StreamHandler(sys.stderr)
    dht_log.addHandler(handler)
    try:
        _run(dht_log)
    finally:
        dht_log.removeHandler(handler)
    assert "No such file" not in capsys.readouterr().err


@pytest.mark.filterwarnings("default")
def test_only_hiveminds_scheduler_catch_up_warning_is_ignored():
    message = "Detected call of `lr_scheduler.step()` before `optimizer.step()`. In PyTorch 1.1.0 and later ..."
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        quiet_hivemind()
        warnings.warn_explicit(message, UserWarning, "state_averager.py", 704, module="hivemind.optim.state_averager")
        warnings.warn_explicit(message, UserWarning, "train.py", 10, module="my_training_script")
    assert [w.filename for w in caught] == ["train.py"]  # the user's own misuse still warns
