"""``python -m dbtk.engine.torchrun``: torchrun for ``dbtk train --nproc``, ending on a stop signal as dbtk does.

torchrun answers SIGTERM or SIGINT by stopping its workers — which finish their step, save ``last`` and say so —
and then lets ``SignalException`` escape its main: a traceback under the ranks' one-line messages, for what is the
expected end of an interrupted run. Here that exception ends the launcher with 128 + the signal's number, the exit
code every dbtk command gives for a stop signal. Any other failure (a crashed rank) stays torchrun's own report.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main


def run() -> int:
    try:
        main()  # reads sys.argv, as the torchrun command does
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(run())
