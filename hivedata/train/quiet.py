"""hivemind's notices that are not news to a user, made quiet or short.

- A request whose sender exited before the DHT process read it: the DHT process logs the failed read as an
  error with a traceback (see :mod:`hivedata.train.swarm_optimizer`, "Leaving quietly"). Nobody waits for its
  answer: a debug line instead.
- An averaging round that found no group or broke off: hivemind logs the exception with its traceback from the
  averager process; the step then uses the peer's local gradients, as the metrics record. One warning line.
- torch's "lr_scheduler.step() before optimizer.step()" when hivemind steps a joiner's schedule up to the epoch
  it downloaded: the catch-up is intended (the schedule follows the global epoch). Ignored.

The filters are inherited by the DHT and averager processes, which hivemind forks: install them before.
"""

from __future__ import annotations

import logging
import warnings

from hivemind.averaging.matchmaking import MatchmakingException
from hivemind.averaging.partition import AllreduceException
from hivemind.p2p import P2PDaemonError, P2PHandlerError

log = logging.getLogger(__name__)
_LOST_SENDER = (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, EOFError)
_ROUND_FAILED = (AllreduceException, MatchmakingException, P2PDaemonError, P2PHandlerError, TimeoutError)


class OrphanedRequestFilter(logging.Filter):
    """Drops the DHT process's error for a request whose sender exited before it was read (a debug line instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for that one record; True for every other."""
        exc = record.exc_info[1] if record.exc_info else None
        if record.funcName == "_run" and isinstance(exc, _LOST_SENDER):
            log.debug("the DHT dropped a request from a process that had exited: %r", exc)
            return False
        return True


class FailedRoundFilter(logging.Filter):
    """Turns an averager's traceback for a failed round into one warning line naming the cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always True: the record is kept, shortened when it is a failed round."""
        exc = record.exc_info[1] if record.exc_info else None
        if record.funcName == "_step" and isinstance(exc, _ROUND_FAILED):
            record.msg, record.args = "averaging round failed (this step used local gradients): %s", (exc,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


_ORPHANED, _FAILED_ROUND = OrphanedRequestFilter(), FailedRoundFilter()


def quiet_hivemind() -> None:
    """Installs the filters above (idempotent); call it before starting a DHT."""
    logging.getLogger("hivemind.dht.dht").addFilter(_ORPHANED)  # a filter already there is not added twice
    logging.getLogger("hivemind.averaging.averager").addFilter(_FAILED_ROUND)
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning,
                            module=r"hivemind\.optim\.state_averager")
